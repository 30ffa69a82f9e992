"""What norm's logs tell an operator: each failure once, at its level, naming what it
concerns; no line per row of a large set; no flood while a service is down."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import kombu.exceptions
import pytest
from celery import Celery
from celery.beat import ScheduleEntry
from rest_framework.test import APIClient

from config import logs, pipeline
from config.celery import RECONCILE_TASK, BeatScheduler
from config.celery import app as celery_app
from messaging import tasks as messaging_tasks
from notify import services as notify_services
from notify.models import TriggerEvent
from subscribers import tasks as subscriber_tasks
from tests.conftest import DatabaseAway, Enqueued, a_bug, ago, json_serving
from tests.e2e.harness import free_port
from tests.factories import (
    NotificationFactory,
    SubscriberFactory,
    TriggerEventFactory,
    api_for,
    client_with_key,
)
from workflows import selectors as workflow_selectors
from workflows import tasks as workflow_tasks
from workflows.models import Notification
from workflows.services import echo, fanout

pytestmark = pytest.mark.django_db

TRIGGER = "/v1/events/trigger"
BROKER_DOWN = "Error 111 connecting to 127.0.0.1:6379. Connection refused."


@pytest.fixture
def broker_down(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every publish refused, as while Redis is down; the task names asked for."""
    asked: list[str] = []

    def refuse(name: str, *args: Any, **kwargs: Any) -> None:
        asked.append(name)
        raise kombu.exceptions.OperationalError(BROKER_DOWN)

    monkeypatch.setattr(celery_app, "send_task", refuse)
    return asked


def test_a_broker_refusing_a_chunks_echoes_is_one_warning_naming_them_without_traceback(
    broker_down: list[str],
    caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: Any,
) -> None:
    event = TriggerEventFactory()
    subscribers = SubscriberFactory.create_batch(30, client=event.client)
    caplog.set_level(logging.INFO)

    with django_capture_on_commit_callbacks(execute=True):
        made = fanout.notifications_create(trigger_event=event, subscribers=subscribers)

    assert made == 30 and Notification.objects.filter(status="pending").count() == 30
    # The broker is asked once: the rest wait in the database for the reconciler, as the
    # first does, rather than each wait out the broker's refusal and log it.
    assert broker_down == [pipeline.ECHO.task]
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.WARNING and record.exc_info is None
    message = record.getMessage()
    first = str(Notification.objects.order_by("subscriber_id").first().pk)  # type: ignore[union-attr]
    assert f"{pipeline.ECHO.task} ('{first}' and 29 more)" in message
    assert BROKER_DOWN in message and "reconciler" in message


def test_a_broker_refusing_one_hand_off_is_a_warning_naming_it_without_traceback(
    broker_down: list[str],
    caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: Any,
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        pipeline.enqueue_on_commit(pipeline.MESSAGE, 42, workflow="welcome", countdown=5)

    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.WARNING and record.exc_info is None
    message = record.getMessage()
    assert f"{pipeline.MESSAGE.task} (42)" in message and BROKER_DOWN in message


def test_a_task_that_gave_up_on_the_database_is_a_warning_without_traceback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Its last retry (DB_RETRY's tenth) failed too: the reconciler sends its row again
    once the database is back. No bug, so no ERROR and traceback for each such task."""
    monkeypatch.setattr(echo, "echo_run", DatabaseAway())

    result = workflow_tasks.echo_run.apply(args=["a-notification"], retries=10)

    assert result.state == "FAILURE"
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.WARNING and record.exc_info is None
    line = record.getMessage()
    assert "norm.echo.run" in line and "server closed the connection unexpectedly" in line


def test_a_fan_out_the_broker_refused_is_a_warning_without_traceback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Let go for the reconciler to run again once the broker is back: no bug, so no
    ERROR and traceback for each trigger fanned out while Redis was away."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise kombu.exceptions.OperationalError(BROKER_DOWN)

    monkeypatch.setattr(pipeline, "send_now", refuse)
    event = TriggerEventFactory()

    result = workflow_tasks.workflow_run.apply(args=[event.pk])

    assert result.state == "FAILURE"
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "norm.workflow.run" in record.getMessage() and BROKER_DOWN in record.getMessage()


def test_the_tasks_run_once_per_notification_log_no_info_line_each(
    enqueued: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Celery's "received" and "succeeded" (and "retry") for each echo, send and chunk:
    at compose's `-l INFO`, a 100,000-subscriber broadcast wrote some 600,000 lines. Kept
    at DEBUG; a trigger's own task keeps its lines, as does each listed recipient's.
    Dropped, not only relabelled: a worker's handlers take every level its loggers pass."""
    caplog.set_level(logging.INFO)
    caplog.handler.setLevel(logging.NOTSET)
    for _ in range(3):
        workflow_tasks.echo_run.apply(args=["00000000-0000-0000-0000-000000000000"])
        messaging_tasks.message_send.apply(args=[0])
    subscriber_tasks.subscribers_process.apply(args=[0, ["ann"]])
    workflow_tasks.reconcile.apply()  # beat's, every NORM_RECONCILE_INTERVAL

    assert [r.getMessage() for r in caplog.records if r.name == "celery.app.trace"] == []

    workflow_tasks.workflow_run.apply(args=[0])
    subscriber_tasks.subscriber_process.apply(args=[0, {"subscriberId": "ann"}])
    lines = [r.getMessage() for r in caplog.records if r.name == "celery.app.trace"]
    assert [line.split("[")[0] for line in lines] == [
        "Task norm.workflow.run",
        "Task norm.subscriber.process",
    ]

    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="celery.app.trace")
    messaging_tasks.message_send.apply(args=[0])
    [record] = [r for r in caplog.records if r.name == "celery.app.trace"]
    assert record.levelno == logging.DEBUG and "norm.message.send" in record.getMessage()


def test_hand_offs_the_broker_refuses_one_after_another_are_one_warning_a_minute(
    broker_down: list[str],
    caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: Any,
) -> None:
    """Each trigger accepted while Redis is away: one line, not one a request."""
    for step_pk in (41, 42, 43):
        with django_capture_on_commit_callbacks(execute=True):
            pipeline.enqueue_on_commit(pipeline.MESSAGE, step_pk, workflow="welcome")

    assert len(broker_down) == 3  # each asked: the broker may be back
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert f"{pipeline.MESSAGE.task} (41)" in record.getMessage()


def test_a_beat_tick_the_broker_refuses_is_one_warning_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Beat logged each tick Redis refused as an ERROR carrying the stack and the
    traceback, some 300 lines every NORM_RECONCILE_INTERVAL for as long as Redis was away.
    Nothing is lost (the next tick sends it again): a WARNING line naming the error."""
    # Not the current app: norm's shared tasks would resolve to it, and every later test
    # in this process that publishes through one (a retry) would meet the dead broker.
    app = Celery("beat-while-redis-is-away", set_as_current=False)
    # Nothing listens there. Not broker_url: CELERY_BROKER_URL in the environment wins.
    app.conf.broker_write_url = f"redis://127.0.0.1:{free_port()}/0"
    scheduler = BeatScheduler(app=app, lazy=True, schedule_filename=str(tmp_path / "schedule"))
    entry = ScheduleEntry(name="reconcile", task=RECONCILE_TASK, schedule=10.0, app=app)
    caplog.set_level(logging.INFO)

    scheduler.apply_entry(entry)

    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "reconcile" in record.getMessage() and "Connection refused" in record.getMessage()
    assert record.getMessage().count("\n") == 0


def test_trigger_events_the_reconciler_fails_are_named_in_its_warning(
    settings: Any, enqueued: Enqueued, caplog: pytest.LogCaptureFixture
) -> None:
    """Fan-outs that never came back NORM_MAX_CLAIMS times (a trigger that kills its
    worker) failed as "reconcile: 2 trigger event(s) failed": no id to find them by among
    the other failed events, as every other failure's line has."""
    events = [
        TriggerEventFactory(
            status=TriggerEvent.Status.PROCESSING,
            claimed_at=ago(settings.NORM_STALE_CLAIM_SECONDS + 1),
            internal_errors=settings.NORM_MAX_CLAIMS - 1,
        )
        for _ in range(2)
    ]

    workflow_tasks.reconcile()

    assert {e.status for e in TriggerEvent.objects.filter(pk__in=[e.pk for e in events])} == {
        TriggerEvent.Status.FAILED
    }
    [line] = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    first, second = sorted(e.pk for e in events)
    assert line.startswith(f"reconcile: trigger event(s) {first}, {second} failed, their fan-out")


def test_a_trigger_event_its_redelivered_run_fails_is_named_in_a_warning(
    settings: Any, enqueued: Enqueued, caplog: pytest.LogCaptureFixture
) -> None:
    """Its task delivered again by Celery after its worker died (reject on worker lost),
    the NORM_MAX_CLAIMS-th time: the event failed with no log line at all."""
    event = TriggerEventFactory(
        status=TriggerEvent.Status.PROCESSING,
        claimed_by="task-1",
        internal_errors=settings.NORM_MAX_CLAIMS - 1,
    )

    fanout.trigger_event_run(trigger_event_id=event.pk, claim="task-1")

    assert TriggerEvent.objects.get(pk=event.pk).status == TriggerEvent.Status.FAILED
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.getMessage() == (
        f"trigger event {event.pk} (client {event.client_id}, workflow {event.workflow_id}) "
        f"failed: {fanout.never_finished()}"
    )


def test_a_beat_tick_that_fails_on_a_bug_keeps_its_error_and_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Only the broker's refusal is the next tick's to mend: a tick failing on a bug (here
    an entry's arguments that are no list, which fails each tick alike) stays Celery's
    ERROR with its traceback, where an operator looks for it."""
    app = Celery("beat-with-a-bug", set_as_current=False)
    app.conf.broker_write_url = f"redis://127.0.0.1:{free_port()}/0"  # never reached
    scheduler = BeatScheduler(app=app, lazy=True, schedule_filename=str(tmp_path / "schedule"))
    entry = ScheduleEntry(name="reconcile", task=RECONCILE_TASK, schedule=10.0, args=1, app=app)
    caplog.set_level(logging.INFO)

    scheduler.apply_entry(entry)

    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert isinstance(record.exc_info[1].__context__, TypeError)


def test_beats_line_for_each_reconcile_it_sends_is_kept_at_debug() -> None:
    """Beat's "Sending due task" every NORM_RECONCILE_INTERVAL names the task in its
    arguments, not in the record's data as the workers' lines do: at INFO, a line every
    10 s buried the rest of `make run`'s log. A line for another task of beat's is kept."""
    logger = logging.getLogger("celery.beat")
    line = "Scheduler: Sending due task %s (%s)"
    for task, kept in ((RECONCILE_TASK, False), ("norm.other", True)):
        record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, line, ("x", task), None)
        assert all(f.filter(record) for f in logger.filters) is kept


def test_a_celery_line_whose_arguments_are_not_all_text_is_logged() -> None:
    """The filter that keeps the per-notification tasks' lines at DEBUG looked each
    argument up among their names: a list (unhashable) raised TypeError out of the log
    call, in the middle of Celery's own code."""
    logger = logging.getLogger("celery.app.trace")
    record = logger.makeRecord(
        logger.name, logging.INFO, __file__, 1, "Task %s with %s", ("x", ["a"]), None
    )
    assert all(f.filter(record) for f in logger.filters)


class Clock:
    """`time` for config.logs: what `Quieted` reads, moved on by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_values_postgresql_refuses_are_one_warning_a_minute(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A NUL in a path is a 400 (PostgreSQL cannot search for it), and each was a warning
    of its own beside Django's quieted line and the access log's: a caller sending it over
    and over wrote a line per request."""
    clock = Clock()
    monkeypatch.setattr(logs, "time", clock)
    _, key = client_with_key()
    api = api_for(key)
    caplog.set_level(logging.INFO)

    def lines() -> list[str]:
        found = [r.getMessage() for r in caplog.records if r.name == "config.errors"]
        caplog.clear()
        return found

    for _ in range(3):
        answer = api.get("/v1/subscribers/ann%00/notifications/feed")
        assert (answer.status_code, answer.json()["code"]) == (400, "invalid_value")
    [line] = lines()
    assert line.startswith("unstorable value on /v1/subscribers/ann%00/notifications/feed")
    assert line.endswith("(0 more requests answered 400 for one since the last such line)")

    clock.now += logs.Quieted.PERIOD
    api.get("/v1/subscribers/ann%00/notifications/feed")
    [line] = lines()
    assert "(2 more requests answered 400" in line


def test_a_bug_every_echo_trips_on_is_one_traceback_a_minute_naming_the_rows_it_hit(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in norm's own code that every notification of a broadcast trips on logged an
    ERROR and a traceback per notification per run: hundreds of thousands, burying every
    other line, while each row's reason said it. One traceback a minute per bug, saying
    how many it held back and naming the rows; another bug of the same task still its own."""
    clock = Clock()
    monkeypatch.setattr(logs, "time", clock)
    monkeypatch.setattr(pipeline._bugs, "MAX_NAMED", 2)
    monkeypatch.setattr(workflow_selectors, "bridge_state", a_bug)
    first, *held = NotificationFactory.create_batch(4)
    caplog.set_level(logging.INFO)

    for notification in (first, *held):
        workflow_tasks.echo_run.apply(args=[str(notification.pk)])

    assert {n.error for n in Notification.objects.all()} == {"KeyError: 'stepId'"}
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert record.getMessage() == (
        f"the echo of notification {first.pk} failed (0 more such since the last such line)"
    )

    caplog.clear()
    clock.now += logs.Quieted.PERIOD
    later = NotificationFactory()
    workflow_tasks.echo_run.apply(args=[str(later.pk)])

    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert record.getMessage() == (
        f"the echo of notification {later.pk} failed (3 more such since the last such "
        f"line: {held[0].pk}, {held[1].pk} and 1 more)"
    )

    caplog.clear()

    def another_bug(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("another")

    monkeypatch.setattr(workflow_selectors, "bridge_state", another_bug)
    workflow_tasks.echo_run.apply(args=[str(first.pk)])

    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.exc_info is not None and record.exc_info[0] is ValueError


def test_a_bug_of_the_same_type_reached_through_another_caller_is_its_own_traceback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two bugs that raise the same exception in one line (a helper's, or a library's such
    as Django's `get`, which all its callers share), each reached from a place of its own:
    each is its own traceback within the minute. Held back as one bug, the second's was
    never logged, only counted among the first's, its place in norm's code unknown."""
    monkeypatch.setattr(logs, "time", Clock())

    def one_caller(*args: Any, **kwargs: Any) -> Any:
        return a_bug()

    def another_caller(*args: Any, **kwargs: Any) -> Any:
        return a_bug()

    first, second = NotificationFactory.create_batch(2)
    for notification, bug in ((first, one_caller), (second, another_caller)):
        monkeypatch.setattr(workflow_selectors, "bridge_state", bug)
        workflow_tasks.echo_run.apply(args=[str(notification.pk)])

    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (
            logging.ERROR,
            f"the echo of notification {n.pk} failed (0 more such since the last such line)",
        )
        for n in (first, second)
    ]
    assert all(r.exc_info is not None for r in records)


def test_answers_of_4xx_are_one_warning_a_minute_per_status_and_route(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Django logged a WARNING for every 4xx answer: a caller with a revoked key, or a
    scan of made-up paths, put a line per request in the log (which the access log has
    already). One a minute per status and route, counting those held back."""
    clock = Clock()
    monkeypatch.setattr(logs, "time", clock)
    caplog.set_level(logging.INFO)
    api = APIClient()

    def request_lines() -> list[str]:
        lines = [r.getMessage() for r in caplog.records if r.name == "django.request"]
        assert {r.levelno for r in caplog.records if r.name == "django.request"} <= {
            logging.WARNING
        }
        caplog.clear()
        return lines

    for _ in range(3):
        assert api.post(TRIGGER, {"name": "w"}, format="json").status_code == 401
    for path in ("/wp-login.php", "/.env"):  # no route: one key for them all
        assert api.get(path).status_code == 404
    assert api.get("/v1/subscribers/ann").status_code == 401  # another route
    assert request_lines() == [
        f"Unauthorized: {TRIGGER} (0 more such answers since the last such line)",
        "Not Found: /wp-login.php (0 more such answers since the last such line)",
        "Unauthorized: /v1/subscribers/ann (0 more such answers since the last such line)",
    ]

    assert api.post(TRIGGER, {"name": "w"}, format="json").status_code == 401
    assert request_lines() == []
    clock.now += logs.Quieted.PERIOD
    assert api.post(TRIGGER, {"name": "w"}, format="json").status_code == 401
    assert api.get("/xmlrpc.php").status_code == 404
    assert request_lines() == [
        f"Unauthorized: {TRIGGER} (3 more such answers since the last such line)",
        "Not Found: /xmlrpc.php (1 more such answers since the last such line)",
    ]


def test_answers_of_5xx_are_each_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Only 4xx answers are quieted: Django's ERROR for each 500, with its traceback (the
    one record of a bug outside the API, an admin page's), stays, one per request."""
    _, key = client_with_key()

    def broken(**kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(notify_services, "trigger_event_check", broken)
    api = api_for(key)
    for _ in range(2):
        answer = api.post(TRIGGER, {"name": "welcome", "to": "ann"}, format="json")
        assert answer.status_code == 500

    lines = [r for r in caplog.records if r.name == "django.request"]
    assert [r.levelno for r in lines] == [logging.ERROR] * 2


def test_triggers_of_a_bridge_norm_cannot_discover_are_one_warning_a_minute_saying_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each trigger that needed the discover of a bridge that is down was Django's ERROR,
    "Bad Gateway: /v1/events/trigger", a line per request, and none said which bridge or
    why (the reason went to the caller alone)."""
    clock = Clock()
    monkeypatch.setattr(logs, "time", clock)
    # The discard port: nothing answers.
    _, key = client_with_key(bridge_url="http://127.0.0.1:9/api/norm")
    api = api_for(key)
    caplog.set_level(logging.INFO)

    def trigger() -> None:
        answer = api.post(TRIGGER, {"name": "welcome", "to": "ann"}, format="json")
        assert (answer.status_code, answer.json()["code"]) == (502, "bridge_unavailable")

    def lines() -> list[logging.LogRecord]:
        found = [r for r in caplog.records if r.levelno >= logging.WARNING]
        caplog.clear()
        return found

    for _ in range(3):
        trigger()
    [line] = lines()
    assert (line.levelno, line.exc_info) == (logging.WARNING, None)
    message = line.getMessage()
    assert "welcome" in message and "127.0.0.1:9/api/norm" in message
    assert "BridgeUnreachable" in message and "(0 more such triggers" in message

    clock.now += logs.Quieted.PERIOD
    trigger()
    [line] = lines()
    assert "(2 more such triggers" in line.getMessage()


def test_a_triggers_workflow_name_is_quoted_in_the_bridges_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The workflow's name is the caller's: written as it came, a line break in it made a
    line of the caller's own in the log."""
    _, key = client_with_key(bridge_url="http://127.0.0.1:9/api/norm")
    caplog.set_level(logging.INFO)

    name = "welcome\n2026-11-30 12:00:00,000 WARNING admin: forged"
    answer = api_for(key).post(TRIGGER, {"name": name, "to": "ann"}, format="json")

    assert answer.status_code == 502
    [line] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "\n" not in line.getMessage()
    assert repr(name) in line.getMessage()


# What a hostile (or broken) bridge may write in its error: a line of its own for the
# log, a failure of another client's, and a terminal escape that turns the text red; and
# the line breaks beyond ASCII's (NEL, a C1 control; U+2028), which str.splitlines and
# log viewers break on too.
FORGED = "\r\n2026-11-30 12:00:00,000 WARNING notification 1 (client 2) failed\x1b[31m\x85\u2028"


def _refusing_bridge(
    method: str, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, Any, dict[str, str]]:
    """A bridge that answers every call with a 400 whose code and message hold FORGED."""
    return 400, {"code": f"Refused{FORGED}", "message": f"no{FORGED}"}, {}


def _one_line_each(records: list[logging.LogRecord]) -> None:
    for record in records:
        message = record.getMessage()
        assert not {"\r", "\n", "\x1b", "\x85", "\u2028"} & set(message), message
        assert "\\r\\n2026-11-30" in message and "\\x1b[31m\\x85\\u2028" in message  # escaped


def test_a_bridges_error_is_one_line_in_the_notifications_failure_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The code and message of a bridge's refusal were written as they came: a line break
    in them made a line of the bridge's own in the worker's log."""
    with json_serving(_refusing_bridge) as url:
        client, _ = client_with_key(bridge_url=f"{url}/api/norm")
        notification = NotificationFactory(trigger_event__client=client)
        caplog.set_level(logging.INFO)

        workflow_tasks.echo_run.apply(args=[str(notification.pk)])

    notification.refresh_from_db()
    assert (notification.status, notification.error_code) == ("failed", f"Refused{FORGED}")
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in lines] == ["workflows.services.echo"]
    _one_line_each(lines)


def test_a_bridges_error_is_one_line_in_the_warning_of_a_trigger_it_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A discover the bridge refused fails the trigger (502); its warning quotes the
    bridge's error, which was written as it came."""
    with json_serving(_refusing_bridge) as url:
        _, key = client_with_key(bridge_url=f"{url}/api/norm")
        caplog.set_level(logging.INFO)

        answer = api_for(key).post(TRIGGER, {"name": "welcome", "to": "ann"}, format="json")

    assert answer.status_code == 502
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in lines] == ["notify.services"]
    _one_line_each(lines)


def test_logging_configured_twice_still_writes_one_count_on_a_4xx_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A second dictConfig (a library or a test setting logging up again) adds its
    filters beside the first's: each counted the line and wrote its own count after the
    other's, "(0 more ...) (0 more ...)"."""
    logger = logging.getLogger("django.request")
    filters = list(logger.filters)
    assert any(isinstance(f, logs.ClientErrorsQuieted) for f in filters)
    logger.addFilter(logs.ClientErrorsQuieted())  # what dictConfig does again
    try:
        caplog.set_level(logging.INFO)
        assert APIClient().post(TRIGGER, {"name": "w"}, format="json").status_code == 401
        assert [r.getMessage() for r in caplog.records if r.name == "django.request"] == [
            f"Unauthorized: {TRIGGER} (0 more such answers since the last such line)"
        ]
    finally:
        logger.filters[:] = filters


def test_a_host_allowed_hosts_lacks_is_one_error_a_minute_without_traceback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, settings: Any
) -> None:
    """Django logged an ERROR with its traceback for each request whose Host header
    ALLOWED_HOSTS lacks, as every scanner of a server's address sends: its line is
    quieted as a 4xx's is, without the traceback, which says only where Django raised
    it. The Host header is the caller's text: a "%s" in it is no format to apply."""
    clock = Clock()
    monkeypatch.setattr(logs, "time", clock)
    caplog.set_level(logging.INFO)
    settings.ALLOWED_HOSTS = ["norm.example.com"]
    api = APIClient()

    def lines() -> list[tuple[str, int, bool, str]]:
        found = [
            (r.name, r.levelno, r.exc_info is not None, r.getMessage())
            for r in caplog.records
            if r.name.startswith("django.")
        ]
        caplog.clear()
        return found

    for _ in range(3):
        assert api.get("/v1/subscribers", HTTP_HOST="scan%s.example").status_code == 400
    refused = "Invalid HTTP_HOST header: 'scan%s.example'. The domain name provided is not valid according to RFC 1034/1035."
    assert lines() == [
        (
            "django.security.DisallowedHost",
            logging.ERROR,
            False,
            f"{refused} (0 more such answers since the last such line)",
        ),
    ]
    clock.now += logs.Quieted.PERIOD
    assert api.get("/", HTTP_HOST="scan%s.example").status_code == 400
    assert lines() == [
        (
            "django.security.DisallowedHost",
            logging.ERROR,
            False,
            f"{refused} (2 more such answers since the last such line)",
        ),
    ]


def test_the_keys_a_quieted_warning_remembers_are_bounded() -> None:
    """A line a minute per key (a row, a route, a bridge): a long-lived process remembered
    every key it ever warned about, as many as its rows."""
    quieted = logs.Quieted()
    quieted.MAX_KEYS = 3
    assert [quieted.due(n) for n in range(4)] == [0, 0, 0, 0]
    assert len(quieted._last) <= 3


def test_a_row_held_back_again_is_named_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broadcast's chunks are all its trigger event's: the line names it once, not once
    for each warning held back about it."""
    clock = Clock()
    monkeypatch.setattr(logs, "time", clock)
    quieted = logs.Quieted()
    assert quieted.due_naming("bridge", "event-1") == (0, (), 0)
    for name in ("event-2", "event-2", "event-3", "event-2"):
        assert quieted.due_naming("bridge", name) is None
    clock.now += logs.Quieted.PERIOD
    assert quieted.due_naming("bridge", "event-4") == (4, ("event-2", "event-3"), 0)


@pytest.mark.parametrize("name", ["urllib3.connectionpool", "urllib3.util.retry"])
def test_a_urllib3_line_quoting_a_bridge_calls_path_masks_its_token(
    caplog: pytest.LogCaptureFixture, name: str
) -> None:
    """urllib3's retry names the URL it retries as its connection pool names each path: a
    filter on the pool's logger alone let the retry's line write a bridge's token whole."""
    caplog.set_level(logging.DEBUG, logger=name)
    path = "/api/novu?token=s3cret&action=execute"
    logging.getLogger(name).debug("Incremented Retry for (url='%s'): %s", path, "Retry(total=4)")
    assert "token=***&action=execute" in caplog.text
    assert "s3cret" not in caplog.text


@pytest.mark.parametrize("name", ["django.request", "django.security.csrf"])
def test_each_logger_of_a_refused_request_has_its_lines_quieted(name: str) -> None:
    """Django logs a refused CSRF check (an admin form posted without its cookie, by any
    caller) on a logger of its own, which a filter on django.security would not see: a
    warning a request, unquieted."""
    filters = logging.getLogger(name).filters
    assert any(isinstance(f, logs.ClientErrorsQuieted) for f in filters)
