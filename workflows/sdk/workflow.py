"""Declaring workflows, and running them: discovery, replay and execution of one step."""

from __future__ import annotations

import copy
import inspect
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NoReturn

from .errors import (
    ExecutionEventPayloadInvalidError,
    ExecutionProviderOutputInvalidError,
    ExecutionStateControlInvalidError,
    ExecutionStateCorruptError,
    ExecutionStateOrderError,
    ExecutionStateOutputInvalidError,
    ExecutionStateResultInvalidError,
    FrameworkError,
    StepAlreadyExistsError,
    StepExecutionFailedError,
    WorkflowExecutionFailedError,
    exception_text,
)
from .schemas import (
    NO_CONTROLS,
    STEP_TYPES,
    Schema,
    SchemaInvalid,
    SchemaSource,
    SchemaUnusable,
    StepType,
)
from .signing import canonical_json

logger = logging.getLogger(__name__)

Resolver = Callable[..., Mapping[str, Any]]
Skip = bool | Callable[..., bool] | None
# Called with as many of the step's outputs and controls as it takes arguments (none,
# the outputs, or both): Novu's SDK passes it `{outputs, controls}`, which a JS function
# may ignore, and overrides written for norm's take one.
ProviderOverride = Callable[..., Mapping[str, Any]]
# What a provider override returns is open, as in Novu's SDK, but must be an object.
PROVIDER_OUTPUT = Schema.of(None)


@dataclass
class StepDefinition:
    step_id: str
    type: StepType
    controls: Schema
    outputs: Schema
    results: Schema
    providers: Mapping[str, ProviderOverride]

    @classmethod
    def build(
        cls,
        type_name: str,
        step_id: str,
        control_schema: SchemaSource | None,
        output_schema: SchemaSource | None,
        providers: Mapping[str, ProviderOverride] | None,
    ) -> StepDefinition:
        step_type = STEP_TYPES[type_name]
        try:
            controls = Schema.of(control_schema, default=NO_CONTROLS)
        except SchemaUnusable as exc:
            raise SchemaUnusable(f"its control schema {exc}") from exc
        try:
            outputs = Schema.of(output_schema, default=step_type.output)
        except SchemaUnusable as exc:
            raise SchemaUnusable(f"its output schema {exc}") from exc
        results = Schema.of(step_type.result) if step_type.result is not None else outputs
        return cls(step_id, step_type, controls, outputs, results, providers or {})

    def describe(self) -> dict[str, Any]:
        return {
            "stepId": self.step_id,
            "type": self.type.name,
            "controls": {"schema": self.controls.json_schema},
            "outputs": {"schema": self.outputs.json_schema},
            "results": {"schema": self.results.json_schema},
            "options": {},
            "providers": [
                {"type": provider_id, "outputs": {"schema": {"type": "object"}}}
                for provider_id in self.providers
            ],
        }


class _Placeholder(dict[str, Any]):
    """A discovery-time result: unknown keys read as None so the workflow body keeps going."""

    def __missing__(self, key: str) -> None:
        return None


class _Unwind(BaseException):
    """Stops the workflow function once its target step ran; BaseException so that a user's
    `except Exception` around a step call cannot swallow it."""


@dataclass
class _Outcome:
    step: StepDefinition
    outputs: dict[str, Any]
    providers: dict[str, Any]
    skipped: bool


def _arguments_wanted(fn: Callable[..., Any]) -> int:
    """How many positional arguments `fn` wants: its leading positional parameters that
    need a value, or any number (`*args`). One with a default is the caller's own:
    `lambda name=name: ...` binds a loop variable, as ruff's B023 asks, and an argument
    would overwrite it. One whose signature cannot be read is taken to want one."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    wanted = 0
    for parameter in parameters:
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return sys.maxsize
        positional = parameter.kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        )
        if not positional or parameter.default is not inspect.Parameter.empty:
            break
        wanted += 1
    return wanted


class _Misused(TypeError):
    """The SDK's own account of a step misused: its message says it all."""


def _not_awaitable(value: Any, what: str) -> Any:
    """`value`, unless an async function or a generator returned it: the SDK awaits and
    iterates nothing, and a coroutine or generator is truthy (an async skip condition, or
    one that yields, skipped every message) and no output."""
    if inspect.isawaitable(value) or inspect.isgenerator(value) or inspect.isasyncgen(value):
        if inspect.iscoroutine(value) or inspect.isgenerator(value):
            value.close()  # no "never awaited" warning on top of the error
        kind = type(value).__name__
        raise _Misused(
            f"its {what} returned {'an' if kind.startswith('a') else 'a'} {kind} (is it "
            "async, or does it yield?), which the SDK does not run: resolvers, skip "
            "conditions and provider overrides must be plain functions"
        )
    return value


def _call(fn: Callable[..., Any], controls: dict[str, Any], what: str) -> Any:
    return _not_awaitable(fn(controls) if _arguments_wanted(fn) else fn(), what)


def _should_skip(skip: Skip, controls: dict[str, Any]) -> bool:
    return bool(_call(skip, controls, "skip condition")) if callable(skip) else bool(skip)


@dataclass
class _Run:
    """One pass through a workflow function, in discovery or execute mode."""

    workflow_id: str
    discovering: bool = False
    state: list[dict[str, Any]] = field(default_factory=list)
    target: str | None = None  # None: norm's mode, the first step beyond the state is the target
    controls: dict[str, Any] = field(default_factory=dict)
    # norm's extension: per-step control values, for when the caller does not know which
    # step will run (norm's mode); an entry wins over `controls` for its step.
    step_controls: dict[str, Any] = field(default_factory=dict)
    reached: list[StepDefinition] = field(default_factory=list)
    outcome: _Outcome | None = None
    error: FrameworkError | None = None

    def step(self, definition: StepDefinition, resolver: Resolver, skip: Skip) -> dict[str, Any]:
        if self.outcome is not None:
            raise _Unwind
        if self.error is not None:
            raise self.error
        try:
            return self._step(definition, resolver, skip)
        except FrameworkError as exc:
            self.failed(exc)
            raise

    def failed(self, error: FrameworkError) -> FrameworkError:
        """`error`, kept so that a user's `except Exception` cannot turn it into a success."""
        self.error = error
        return error

    def misdeclared_step(self, step_id: str, problem: str) -> StepExecutionFailedError:
        # A step declared so that it cannot run (a schema that cannot be applied, an
        # argument of the wrong kind). The bridge's own code is at fault, as when a
        # resolver throws: answered as StepExecutionFailedError (502), which neither norm
        # nor Novu retries, rather than as a 500 retried to no avail.
        return StepExecutionFailedError(
            f"Failed to execute Step with id: `{step_id}`: {problem}",
            data={"workflowId": self.workflow_id, "stepId": step_id},
        )

    def _step(self, definition: StepDefinition, resolver: Resolver, skip: Skip) -> dict[str, Any]:
        step_id = definition.step_id
        if any(seen.step_id == step_id for seen in self.reached):
            raise StepAlreadyExistsError(
                f"Workflow with id: `{self.workflow_id}` has a duplicate step id: `{step_id}`",
                data={"workflowId": self.workflow_id, "stepId": step_id},
            )
        index = len(self.reached)
        self.reached.append(definition)
        if self.discovering:
            return _Placeholder(definition.type.placeholder)
        if self.target is None:
            entry = self._entry_in_order(index, definition, resolver, skip)
        else:
            entry = self._entry_by_id(definition, resolver, skip)
        return self._result(definition, entry)

    def _entry_in_order(
        self, index: int, definition: StepDefinition, resolver: Resolver, skip: Skip
    ) -> dict[str, Any]:
        """norm's mode: the `index`-th step the code reaches is the state's `index`-th
        entry, and the first one beyond the state is executed."""
        if index == len(self.state):
            self._execute(definition, resolver, skip)
        entry = self.state[index]
        if entry["stepId"] != definition.step_id:
            raise self.order_error()
        return entry

    def _entry_by_id(
        self, definition: StepDefinition, resolver: Resolver, skip: Skip
    ) -> dict[str, Any]:
        """Novu's mode: the step the query names is executed; any other is looked up in
        the state by id, in any order."""
        step_id = definition.step_id
        if step_id == self.target:
            self._execute(definition, resolver, skip)
        entry = next((e for e in self.state if e["stepId"] == step_id), None)
        if entry is None:
            raise ExecutionStateCorruptError(
                f"Workflow with id: `{self.workflow_id}` has a corrupt state. Step with id: "
                f"`{step_id}` does not exist. Please provide the missing state.",
                data={"workflowId": self.workflow_id, "stepId": step_id},
            )
        return entry

    def _result(self, definition: StepDefinition, entry: dict[str, Any]) -> dict[str, Any]:
        """What a step that already ran returns to the code: its result from the state."""
        outputs = entry.get("outputs", {})
        status = entry.get("state")  # informational, as for Novu's SDK: any value is read
        if isinstance(status, dict) and status.get("status") == "skipped":
            # A skipped step has no result to hold to the schema (a custom step's is {}).
            return outputs if isinstance(outputs, dict) else {}
        return self._validated(definition, definition.results, outputs, "result")

    def order_error(self) -> ExecutionStateOrderError:
        expected = [d.step_id for d in self.reached]
        received = [e["stepId"] for e in self.state]
        return ExecutionStateOrderError(
            f"Workflow with id: `{self.workflow_id}` reaches its steps in an order that does not "
            f"match the state: expected {expected}, received {received}.",
            data={"expected": expected, "received": received},
        )

    def _execute(self, definition: StepDefinition, resolver: Resolver, skip: Skip) -> NoReturn:
        """Run the step and keep its outcome, then unwind the workflow function."""
        values = self.step_controls.get(definition.step_id, self.controls)
        controls = self._validated(definition, definition.controls, values, "controls")
        if self._user_code(definition, lambda: _should_skip(skip, controls)):
            self.outcome = _Outcome(definition, {}, {}, skipped=True)
            raise _Unwind
        raw = self._user_code(definition, lambda: _call(resolver, controls, "resolver"))
        outputs = self._validated(definition, definition.outputs, raw, "output")
        providers = {
            provider_id: self._provider(definition, provider_id, fn, outputs, controls)
            for provider_id, fn in definition.providers.items()
        }
        self.outcome = _Outcome(definition, outputs, providers, skipped=False)
        raise _Unwind

    def _provider(
        self,
        definition: StepDefinition,
        provider_id: str,
        fn: ProviderOverride,
        outputs: dict[str, Any],
        controls: dict[str, Any],
    ) -> dict[str, Any]:
        what = f"provider override `{provider_id}`"
        arguments = (outputs, controls)[: _arguments_wanted(fn)]
        raw = self._user_code(definition, lambda: _not_awaitable(fn(*arguments), what))
        return self._validated(definition, PROVIDER_OUTPUT, raw, "provider")

    def _user_code(self, definition: StepDefinition, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:
            logger.exception("Step %s of workflow %s failed", definition.step_id, self.workflow_id)
            reason = str(exc) if isinstance(exc, _Misused) else exception_text(exc)
            raise StepExecutionFailedError(
                f"Failed to execute Step with id: `{definition.step_id}`: {reason}",
                data={"workflowId": self.workflow_id, "stepId": definition.step_id},
            ) from exc

    def _validated(self, definition: StepDefinition, schema: Schema, value: Any, what: str) -> Any:
        error_class, name = {
            "controls": (ExecutionStateControlInvalidError, "`controls`"),
            "output": (ExecutionStateOutputInvalidError, "output"),
            "result": (ExecutionStateResultInvalidError, "result"),
            "provider": (ExecutionProviderOutputInvalidError, "provider output"),
        }[what]
        try:
            if what in ("output", "provider"):
                return _user_value(schema, value)
            return schema.validate(value)
        except SchemaUnusable as exc:
            kind = what.removesuffix("s")  # the custom step's result schema is its output one
            raise self.misdeclared_step(definition.step_id, f"its {kind} schema {exc}") from exc
        except SchemaInvalid as exc:
            raise error_class(
                f"Workflow with id: `{self.workflow_id}` has an invalid state. Step with id: "
                f"`{definition.step_id}` has invalid {name}. Please provide the correct step "
                f"{what}.",
                data=exc.problems,
            ) from exc


def _user_value(schema: Schema, value: Any) -> Any:
    """What user code returned (outputs, a provider's), validated and cleaned. It goes over
    the wire and into norm's database: a value JSON cannot write (a set, a datetime) or
    writes invalidly (NaN, Infinity) would fail there, or crash the adapter."""
    if isinstance(value, Mapping):
        # Any Mapping, as the resolver's type allows (a UserDict, a ChainMap, a read-only
        # mappingproxy): JSON Schema's "object" is a dict, and each was refused as "{...}
        # is not of type 'object'", or "cannot pickle 'mappingproxy' object".
        value = dict(value)
    try:
        # Validation copies the value first: a generator or a lock fails already there.
        value = schema.validate(value)
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, copy.Error) as exc:
        raise SchemaInvalid([{"path": "", "message": str(exc)}]) from exc
    return value


def _declaration_problem(step_id: Any, resolver: Any, skip: Any, providers: Any) -> str | None:
    """What is wrong with a step's arguments, which Python checks no more than their
    types say. Unchecked, each failed far from the call: an id that is no string
    (discovered as `5`, never matched by the "5" norm sends back), a dict given as the
    resolver ("'dict' object is not callable" once norm runs it), a value as `skip`
    (any non-empty string skipped the step), a list of providers (a 500 norm retried)."""
    if not isinstance(step_id, str) or not step_id:
        return f"its id must be a non-empty string, not {step_id!r:.100}"
    if not callable(resolver):
        return (
            "its resolver must be a function returning the step's outputs, "
            f"not a {type(resolver).__name__}"
        )
    if not (skip is None or isinstance(skip, bool) or callable(skip)):
        return f"`skip` must be a bool or a function, not a {type(skip).__name__}"
    if providers is not None:
        if not isinstance(providers, Mapping):
            return (
                "`providers` must map provider ids to functions, "
                f"not be a {type(providers).__name__}"
            )
        for provider_id, fn in providers.items():
            if not isinstance(provider_id, str) or not callable(fn):
                return (
                    "`providers` must map provider ids to functions: "
                    f"{provider_id!r:.100} maps to a {type(fn).__name__}"
                )
    return None


class StepApi:
    """`ctx.step`: each method declares one step and returns its result (from the state).

    Each is written out, not made by a factory, so that a type checker and an editor know
    its parameters: a factory's method is a `Callable[..., dict]`, whose calls none checks
    (`output_schema=` on an email, a typo in `control_schema=`, failed only when run)."""

    def __init__(self, run: _Run) -> None:
        self._run = run

    def email(
        self,
        step_id: str,
        resolver: Resolver,
        *,
        skip: Skip = None,
        control_schema: SchemaSource | None = None,
        providers: Mapping[str, ProviderOverride] | None = None,
    ) -> dict[str, Any]:
        """Declare an email step; returns its result once it has run."""
        return self._step("email", step_id, resolver, skip, control_schema, None, providers)

    def sms(
        self,
        step_id: str,
        resolver: Resolver,
        *,
        skip: Skip = None,
        control_schema: SchemaSource | None = None,
        providers: Mapping[str, ProviderOverride] | None = None,
    ) -> dict[str, Any]:
        """Declare an SMS step; returns its result once it has run."""
        return self._step("sms", step_id, resolver, skip, control_schema, None, providers)

    def push(
        self,
        step_id: str,
        resolver: Resolver,
        *,
        skip: Skip = None,
        control_schema: SchemaSource | None = None,
        providers: Mapping[str, ProviderOverride] | None = None,
    ) -> dict[str, Any]:
        """Declare a push step; returns its result once it has run."""
        return self._step("push", step_id, resolver, skip, control_schema, None, providers)

    def chat(
        self,
        step_id: str,
        resolver: Resolver,
        *,
        skip: Skip = None,
        control_schema: SchemaSource | None = None,
        providers: Mapping[str, ProviderOverride] | None = None,
    ) -> dict[str, Any]:
        """Declare a chat step; returns its result once it has run."""
        return self._step("chat", step_id, resolver, skip, control_schema, None, providers)

    def in_app(
        self,
        step_id: str,
        resolver: Resolver,
        *,
        skip: Skip = None,
        control_schema: SchemaSource | None = None,
        providers: Mapping[str, ProviderOverride] | None = None,
    ) -> dict[str, Any]:
        """Declare an in-app step; returns its result once it has run."""
        return self._step("in_app", step_id, resolver, skip, control_schema, None, providers)

    def delay(
        self,
        step_id: str,
        resolver: Resolver,
        *,
        skip: Skip = None,
        control_schema: SchemaSource | None = None,
        providers: Mapping[str, ProviderOverride] | None = None,
    ) -> dict[str, Any]:
        """Declare a delay step; returns its result once it has run."""
        return self._step("delay", step_id, resolver, skip, control_schema, None, providers)

    def custom(
        self,
        step_id: str,
        resolver: Resolver,
        *,
        skip: Skip = None,
        control_schema: SchemaSource | None = None,
        output_schema: SchemaSource | None = None,
        providers: Mapping[str, ProviderOverride] | None = None,
    ) -> dict[str, Any]:
        return self._step(
            "custom", step_id, resolver, skip, control_schema, output_schema, providers
        )

    def _step(
        self,
        type_name: str,
        step_id: str,
        resolver: Resolver,
        skip: Skip,
        control_schema: SchemaSource | None,
        output_schema: SchemaSource | None,
        providers: Mapping[str, ProviderOverride] | None,
    ) -> dict[str, Any]:
        problem = _declaration_problem(step_id, resolver, skip, providers)
        if problem:
            raise self._run.failed(self._run.misdeclared_step(str(step_id), problem))
        try:
            definition = StepDefinition.build(
                type_name, step_id, control_schema, output_schema, providers
            )
        except SchemaUnusable as exc:
            raise self._run.failed(self._run.misdeclared_step(step_id, str(exc))) from exc
        return self._run.step(definition, resolver, skip)


@dataclass
class Context:
    """What a workflow function receives. `controls` is `{}`, as Novu's SDK gives it: a
    step's control values reach that step's resolver and skip condition only."""

    workflow_id: str
    payload: dict[str, Any]
    subscriber: dict[str, Any]
    controls: dict[str, Any]
    step: StepApi
    actor: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)


def _response(outcome: _Outcome | None, started: float) -> dict[str, Any]:
    return {
        "outputs": outcome.outputs if outcome else {},
        "providers": outcome.providers if outcome else {},
        "options": {"skip": outcome.skipped if outcome else False},
        "metadata": {
            "status": "success",
            "error": False,
            "duration": (time.perf_counter() - started) * 1000,
        },
        "stepId": outcome.step.step_id if outcome else None,
        "type": outcome.step.type.name if outcome else None,
        "done": outcome is None,
    }


def _object_field(body: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name)
    return value if isinstance(value, dict) else {}


def _check_workflow_id(workflow_id: Any) -> None:
    if not isinstance(workflow_id, str) or not workflow_id:
        # `@workflow` without its id passes the function as the id.
        raise TypeError(
            f"The workflow id must be a non-empty string, not {workflow_id!r:.100}: "
            'declare a workflow with @workflow("its-id")'
        )


def _check_function(workflow_id: str, fn: Any) -> None:
    if not callable(fn):
        raise TypeError(
            f"Workflow {workflow_id!r}: the workflow function must be a function, "
            f"not a {type(fn).__name__}"
        )
    if (
        inspect.iscoroutinefunction(fn)
        or inspect.isasyncgenfunction(fn)
        or inspect.isgeneratorfunction(fn)
    ):
        # Calling it would only create a coroutine or generator: no step would ever run,
        # discover would list none and every execute would answer "done".
        raise TypeError(
            f"Workflow {workflow_id!r}: the workflow function must be a plain `def`, "
            "not async or a generator"
        )


def _tag_list(workflow_id: str, tags: Any) -> list[str]:
    # Listed once: a generator read by the check below was empty when kept.
    tag_list = [] if tags is None or isinstance(tags, str) else list(tags)
    if isinstance(tags, str) or not all(isinstance(tag, str) for tag in tag_list):
        # list("billing") would have made it the tags "b", "i", "l", ...
        raise TypeError(f"Workflow {workflow_id!r}: `tags` must be a list of strings")
    return tag_list


class Workflow:
    def __init__(
        self,
        workflow_id: str,
        fn: Callable[[Context], Any],
        *,
        payload_schema: SchemaSource | None = None,
        control_schema: SchemaSource | None = None,
        name: str | None = None,
        description: str | None = None,
        tags: list[str] | None = None,
        severity: str = "none",
        preferences: dict[str, Any] | None = None,
    ) -> None:
        _check_workflow_id(workflow_id)
        _check_function(workflow_id, fn)
        self.workflow_id = workflow_id
        self.fn = fn
        try:
            self.payload_schema = Schema.of(payload_schema)
            self.control_schema = Schema.of(control_schema, default=NO_CONTROLS)
        except SchemaUnusable as exc:
            raise SchemaUnusable(f"Workflow {workflow_id!r}: a schema {exc}") from exc
        self.name = name or workflow_id
        self.description = description
        self.tags = _tag_list(workflow_id, tags)
        self.severity = severity
        self.preferences = dict(preferences or {})
        try:
            # What discover lists, written once here: a value JSON cannot write (a lazy
            # translation as the name, a date in the preferences) made discover a 500 for
            # every workflow of the bridge.
            canonical_json([self.name, self.description, self.severity, self.preferences])
        except (TypeError, RecursionError) as exc:
            raise TypeError(
                f"Workflow {workflow_id!r}: its name, description, severity and preferences "
                f"must be JSON (str, int, float, bool, None, list, dict): {exc}"
            ) from None

    def __repr__(self) -> str:
        return f"<Workflow {self.workflow_id}>"

    @property
    def steps(self) -> list[StepDefinition]:
        """The steps the function reaches with an empty payload, in code order."""
        return self._discovered[0]

    @cached_property
    def _discovered(self) -> tuple[list[StepDefinition], StepAlreadyExistsError | None]:
        """The steps discovery reached, and the duplicate step id it met, if any."""
        run = _Run(self.workflow_id, discovering=True)
        payload = self.payload_schema.defaults({})
        try:
            self._ran(self.fn(self._context(run, payload, {})))
        except Exception:
            # A body that needs real payload values stops here; keep what was found so far.
            logger.warning(
                "Discovery of workflow %s stopped early", self.workflow_id, exc_info=True
            )
        # Kept by the run even if the user's code swallowed it.
        duplicate = run.error if isinstance(run.error, StepAlreadyExistsError) else None
        return run.reached, duplicate

    def describe(self) -> dict[str, Any]:
        duplicate = self._discovered[1]
        if duplicate is not None:
            # As Novu's SDK, which refuses to discover such a workflow (409): listing one
            # of the two steps would hide that every execute reaching both fails.
            raise duplicate.with_traceback(None)
        described: dict[str, Any] = {"workflowId": self.workflow_id, "name": self.name}
        if self.description:
            described["description"] = self.description
        return described | {
            "tags": self.tags,
            "severity": self.severity,
            "payload": {"schema": self.payload_schema.json_schema},
            "controls": {"schema": self.control_schema.json_schema},
            "preferences": self.preferences,
            "steps": [step.describe() for step in self.steps],
        }

    def execute(self, body: Mapping[str, Any], step_id: str | None = None) -> dict[str, Any]:
        """Answer one execute request; `step_id=None` is norm's ordered mode."""
        started = time.perf_counter()
        payload = self._payload(body.get("payload"))
        run = _Run(
            self.workflow_id,
            state=self._state(body.get("state")),
            target=step_id or None,
            controls=self._controls(body),
            step_controls=self._step_controls(body),
        )
        try:
            self._ran(self.fn(self._context(run, payload, body)))
        except _Unwind:
            pass
        except Exception:
            if run.error is not None:
                raise run.error from None
            raise
        if run.error is not None:
            raise run.error
        if run.outcome is None and run.target is None and len(run.reached) < len(run.state):
            raise run.order_error()
        return _response(run.outcome, started)

    def _ran(self, returned: Any) -> None:
        """Refuse what the workflow function returned if its body never ran: `Workflow`
        refuses an async or generator function, but one behind a plain decorator (a
        `functools.wraps` wrapper) passes for a `def`, and its coroutine reached no
        step: discover listed none and every execute answered "done", nothing sent."""
        if not (
            inspect.isawaitable(returned)
            or inspect.isgenerator(returned)
            or inspect.isasyncgen(returned)
        ):
            return
        if inspect.iscoroutine(returned) or inspect.isgenerator(returned):
            returned.close()  # no "never awaited" warning on top of the error
        raise WorkflowExecutionFailedError(
            f"Failed to execute Workflow with id: `{self.workflow_id}`: its function returned "
            f"a {type(returned).__name__}, which the SDK does not run: the workflow function "
            "must be a plain `def`, not async or a generator",
            data={"workflowId": self.workflow_id},
        )

    def _context(self, run: _Run, payload: dict[str, Any], body: Mapping[str, Any]) -> Context:
        return Context(
            workflow_id=self.workflow_id,
            payload=payload,
            subscriber=_object_field(body, "subscriber"),
            controls={},
            step=StepApi(run),
            actor=_object_field(body, "actor"),
            context=_object_field(body, "context"),
        )

    def _payload(self, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict):
            raise ExecutionEventPayloadInvalidError(
                f"Workflow with id: `{self.workflow_id}` has invalid `payload`. "
                "Please provide the correct event payload.",
                data={"message": "Event `payload` is required"},
            )
        try:
            return self.payload_schema.validate(payload)
        except SchemaUnusable as exc:
            # The workflow's own code is at fault, as for a step's broken schema: a 502,
            # which norm does not retry (Novu's SDK answers a 500 BridgeError, retried).
            raise WorkflowExecutionFailedError(
                f"Failed to execute Workflow with id: `{self.workflow_id}`: its payload "
                f"schema {exc}",
                data={"workflowId": self.workflow_id},
            ) from exc
        except SchemaInvalid as exc:
            raise ExecutionEventPayloadInvalidError(
                f"Workflow with id: `{self.workflow_id}` has invalid `payload`. "
                "Please provide the correct event payload.",
                data=exc.problems,
            ) from exc

    def _state(self, state: Any) -> list[dict[str, Any]]:
        valid = isinstance(state, list) and all(
            isinstance(e, dict) and isinstance(e.get("stepId"), str) for e in state
        )
        if not valid:
            raise ExecutionStateCorruptError(
                f"Workflow with id: `{self.workflow_id}` has a corrupt state. `state` must be "
                "an array of objects with a `stepId`.",
                data={"workflowId": self.workflow_id, "stepId": None},
            )
        return state

    def _controls(self, body: Mapping[str, Any]) -> dict[str, Any]:
        controls = body.get("controls", {})
        if not isinstance(controls, dict):
            raise ExecutionStateControlInvalidError(
                f"Workflow with id: `{self.workflow_id}` has invalid `controls`: must be an object",
                data=[{"path": "", "message": "must be object"}],
            )
        return controls

    def _step_controls(self, body: Mapping[str, Any]) -> dict[str, Any]:
        step_controls = body.get("stepControls", {})
        valid = isinstance(step_controls, dict) and all(
            isinstance(v, dict) for v in step_controls.values()
        )
        if not valid:
            raise ExecutionStateControlInvalidError(
                f"Workflow with id: `{self.workflow_id}` has invalid `stepControls`: must be an "
                "object of objects keyed by step id",
                data=[{"path": "/stepControls", "message": "must be object of objects"}],
            )
        return step_controls


def workflow(
    workflow_id: str,
    *,
    payload_schema: SchemaSource | None = None,
    control_schema: SchemaSource | None = None,
    name: str | None = None,
    description: str | None = None,
    tags: list[str] | None = None,
    severity: str = "none",
    preferences: dict[str, Any] | None = None,
) -> Callable[[Callable[[Context], Any]], Workflow]:
    """Decorator: turn `fn(ctx)` into a Workflow served by a Bridge."""
    _check_workflow_id(workflow_id)

    def decorate(fn: Callable[[Context], Any]) -> Workflow:
        return Workflow(
            workflow_id,
            fn,
            payload_schema=payload_schema,
            control_schema=control_schema,
            name=name,
            description=description,
            tags=tags,
            severity=severity,
            preferences=preferences,
        )

    return decorate
