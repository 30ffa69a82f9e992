"""norm's Python workflow SDK: declare workflows as code and serve them on a bridge.

The core needs only `jsonschema` and its `referencing` (its `format`s are checked by
norm's own port of Novu's ajv-formats) and `regress` (a `pattern` matched as JavaScript
matches it), and `pydantic` if models are used as schemas; the Django adapter lives in `.django`. An
application installs this folder as the `norm-sdk` distribution (its pyproject.toml) and
imports `norm_sdk` and `norm_sdk.django`; inside norm it is `workflows.sdk`.
"""

from __future__ import annotations

from .bridge import FRAMEWORK_VERSION, SDK_VERSION, Bridge
from .errors import (
    BridgeError,
    ExecutionEventPayloadInvalidError,
    ExecutionProviderOutputInvalidError,
    ExecutionStateControlInvalidError,
    ExecutionStateCorruptError,
    ExecutionStateOrderError,
    ExecutionStateOutputInvalidError,
    ExecutionStateResultInvalidError,
    FrameworkError,
    InvalidActionError,
    MethodNotAllowedError,
    RequestBodyTooLargeError,
    SignatureExpiredError,
    SignatureInvalidError,
    SignatureMismatchError,
    SignatureNotFoundError,
    SigningKeyNotFoundError,
    StepAlreadyExistsError,
    StepExecutionFailedError,
    StepNotFoundError,
    WorkflowExecutionFailedError,
    WorkflowNotFoundError,
)
from .signing import canonical_json, signature_header, verify_signature
from .workflow import Context, StepApi, Workflow, workflow

__all__ = [
    "FRAMEWORK_VERSION",
    "SDK_VERSION",
    "Bridge",
    "BridgeError",
    "Context",
    "ExecutionEventPayloadInvalidError",
    "ExecutionProviderOutputInvalidError",
    "ExecutionStateControlInvalidError",
    "ExecutionStateCorruptError",
    "ExecutionStateOrderError",
    "ExecutionStateOutputInvalidError",
    "ExecutionStateResultInvalidError",
    "FrameworkError",
    "InvalidActionError",
    "MethodNotAllowedError",
    "RequestBodyTooLargeError",
    "SignatureExpiredError",
    "SignatureInvalidError",
    "SignatureMismatchError",
    "SignatureNotFoundError",
    "SigningKeyNotFoundError",
    "StepAlreadyExistsError",
    "StepApi",
    "StepExecutionFailedError",
    "StepNotFoundError",
    "Workflow",
    "WorkflowExecutionFailedError",
    "WorkflowNotFoundError",
    "canonical_json",
    "signature_header",
    "verify_signature",
    "workflow",
]
