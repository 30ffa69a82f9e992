"""Typed bridge errors; `code` and `status` match @novu/framework 2.13.2."""

from __future__ import annotations

from typing import Any, ClassVar


class FrameworkError(Exception):
    """An error the bridge answers as `{"message", "code", "data"?}` with `status`."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "FrameworkError"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.code = cls.__name__

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.data is not None:
            body["data"] = self.data
        return body


def exception_text(exc: BaseException) -> str:
    """An author's exception as Python's traceback writes it: its type, then its message.
    The message alone read as nothing for an `assert` or a `raise ValueError()`, and as a
    bare `'orderId'` for a KeyError."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class InvalidActionError(FrameworkError):
    pass


class ExecutionEventPayloadInvalidError(FrameworkError):
    pass


class ExecutionStateCorruptError(FrameworkError):
    pass


class ExecutionStateOrderError(FrameworkError):
    """norm's own: the code reaches its steps in another order than the state records."""


class ExecutionStateResultInvalidError(FrameworkError):
    pass


class ExecutionStateControlInvalidError(FrameworkError):
    pass


class ExecutionStateOutputInvalidError(FrameworkError):
    pass


class ExecutionProviderOutputInvalidError(FrameworkError):
    pass


class SignatureNotFoundError(FrameworkError):
    status = 401


class SignatureInvalidError(FrameworkError):
    status = 401


class SignatureExpiredError(FrameworkError):
    status = 401


class SignatureMismatchError(FrameworkError):
    status = 401


class SigningKeyNotFoundError(FrameworkError):
    status = 401


class WorkflowNotFoundError(FrameworkError):
    status = 404


class StepNotFoundError(FrameworkError):
    status = 404


class MethodNotAllowedError(FrameworkError):
    status = 405


class RequestBodyTooLargeError(FrameworkError):
    """norm's own: the web framework refused to read a body that large."""

    status = 413


class StepAlreadyExistsError(FrameworkError):
    status = 409


class BridgeError(FrameworkError):
    status = 500


class StepExecutionFailedError(FrameworkError):
    status = 502


class WorkflowExecutionFailedError(FrameworkError):
    status = 502
