"""config.db.insert_once: one statement, in or out of a transaction, whatever happens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.models.expressions import DatabaseDefault
from django.test.utils import CaptureQueriesContext

from config.db import bounded, error_text, insert_once
from notify.models import TriggerEvent
from subscribers.models import Subscriber
from tests.conftest import on_sqlite
from tests.factories import ClientFactory, NotificationFactory, SubscriberFactory
from workflows.models import Notification

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_conflict_is_false_and_leaves_the_transaction_usable_without_a_savepoint() -> None:
    client = ClientFactory()
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        first = Subscriber(client=client, subscriber_id="ann")
        assert insert_once(first) is True
        assert first.pk is not None and not first._state.adding
        assert insert_once(Subscriber(client=client, subscriber_id="ann")) is False
        assert Subscriber.objects.get(subscriber_id="ann").pk == first.pk  # still usable
    statements = [q["sql"].split(None, 1)[0].upper() for q in queries]
    assert "SAVEPOINT" not in statements
    assert statements.count("INSERT") == 2


def test_a_row_whose_pk_is_set_here_is_told_apart_from_a_conflict() -> None:
    # A UUID pk is no column the database returns by itself: a RETURNING of nothing
    # would read as a conflict.
    existing = NotificationFactory()
    again = Notification(
        trigger_event=existing.trigger_event,
        client=existing.client,
        subscriber=existing.subscriber,
        workflow_id=existing.workflow_id,
        resource=existing.resource,
    )
    fresh = Notification(
        trigger_event=existing.trigger_event,
        client=existing.client,
        subscriber=SubscriberFactory(client=existing.client),
        workflow_id=existing.workflow_id,
        resource=existing.resource,
    )

    assert insert_once(fresh) is True
    assert insert_once(again) is False
    assert Notification.objects.count() == 2


def test_a_row_that_breaks_no_unique_constraint_but_another_still_raises() -> None:
    with pytest.raises(IntegrityError):
        insert_once(Subscriber(client=ClientFactory(), subscriber_id=None))


# insert_once of a row a NOT NULL refuses, and of one that exists, with RETURNING and
# without (SQLite before 3.35).
NOT_NULL_ON_SQLITE = """
from django.db import IntegrityError, connection, transaction
from config.db import insert_once
from subscribers.models import Subscriber
from tests.factories import ClientFactory

client = ClientFactory()
found = []
for returning in (True, False):
    connection.features.can_return_columns_from_insert = returning
    try:
        with transaction.atomic():
            insert_once(Subscriber(client=client, subscriber_id=None))
        found.append("inserted or existed")
    except IntegrityError:
        found.append("raised")
    found.append(insert_once(Subscriber(client=client, subscriber_id=f"ann{returning}")))
    found.append(insert_once(Subscriber(client=client, subscriber_id=f"ann{returning}")))
"""


def test_a_row_a_not_null_refuses_raises_on_sqlite_too(tmp_path: Path) -> None:
    """SQLite's INSERT OR IGNORE, which Django writes for a conflict ignored, passes over
    a NOT NULL or CHECK violation too: under `make run` a bug's INSERT read as a row that
    existed (a message's left its step claimed and unexplained, until the reconciler
    failed it as taken by workers that never finished it). As on PostgreSQL, it raises."""
    assert on_sqlite(tmp_path, NOT_NULL_ON_SQLITE) == ["raised", True, False] * 2


def test_an_insert_reads_back_only_what_the_database_made() -> None:
    """Django returns every field with a database default, whether the row set it or not:
    each trigger's INSERT read back and converted its `redelivered` and `recheck_from`,
    which the API set itself. Only the id comes back, and a default left to the database
    (DatabaseDefault) when a row leaves one."""
    client = ClientFactory()

    def stored(**fields: object) -> tuple[TriggerEvent, str]:
        event = TriggerEvent(
            client=client, workflow_id="w", mode="multicast", resource="b", **fields
        )
        with CaptureQueriesContext(connection) as queries:
            assert insert_once(event) is True
        return event, queries[-1]["sql"]

    event, sql = stored(transaction_id="set")
    assert sql.endswith('RETURNING "notify_triggerevent"."id"'), sql
    field = TriggerEvent._meta.get_field("recheck_from")
    default = DatabaseDefault(field.db_default, output_field=field)  # as Django makes it
    left, sql = stored(transaction_id="left", recheck_from=default)
    assert sql.endswith(
        'RETURNING "notify_triggerevent"."id", "notify_triggerevent"."recheck_from"'
    )
    stored_at = TriggerEvent.objects.values_list("recheck_from", flat=True).get(pk=left.pk)
    assert left.recheck_from == stored_at is not None


def test_a_text_of_exactly_the_limit_is_kept_whole_and_a_longer_one_cut_to_it() -> None:
    assert bounded("x" * 10, 10) == "x" * 10
    assert bounded("x" * 11, 10) == "x" * 9 + "…"


def test_an_error_of_several_lines_is_its_type_and_first_line() -> None:
    """A reason the admin and the API show on one line: an exception's message of several
    lines (a traceback quoted, a statement) is cut at its first."""
    assert error_text(ValueError("bad value\n  in line 3")) == "ValueError: bad value"
    assert error_text(ValueError("")) == "ValueError"


# Each lookup of a name, as the subscriber lists filter them: what it finds, on the
# database the script runs on.
CASE_LOOKUPS = """
from subscribers.models import Subscriber
from tests.factories import ClientFactory, SubscriberFactory

client = ClientFactory()
for n, name in enumerate(["Müller", "Straße", "Mull", "ÅSA"]):
    SubscriberFactory(client=client, subscriber_id=f"s{n}", last_name=name)
asked = [
    ("iexact", "MÜLLER"), ("icontains", "üll"), ("istartswith", "mü"), ("iendswith", "LER"),
    ("iexact", "STRAßE"), ("iexact", "strasse"), ("icontains", "SS"), ("iexact", "åsa"),
]
found = [
    sorted(Subscriber.objects.filter(**{f"last_name__{how}": text}).values_list(
        "last_name", flat=True
    ))
    for how, text in asked
]
"""


def test_case_insensitive_lookups_find_on_sqlite_what_they_find_on_postgresql(
    tmp_path: Path,
) -> None:
    """SQLite's LIKE folds ASCII letters only: under `make run` "MÜLLER" found no
    "Müller", where PostgreSQL found it. Each character is upper-cased one for one, as
    PostgreSQL's UPPER does: "Straße" is found by "STRAßE", and not by "strasse", as
    Python's upper case of "ß" ("SS") would have it."""
    on_postgresql: dict[str, Any] = {}
    exec(CASE_LOOKUPS, on_postgresql)  # on this test's database
    found_on_sqlite = on_sqlite(tmp_path, CASE_LOOKUPS)

    expected = [["Müller"], ["Müller"], ["Müller"], ["Müller"], ["Straße"], [], [], ["ÅSA"]]
    assert connection.vendor == "postgresql"
    assert on_postgresql["found"] == expected
    assert found_on_sqlite == expected


# insert_once on SQLite without RETURNING (before 3.35), which Django 5.2 still runs on:
# Ubuntu 20.04's 3.31, Debian 11's 3.34. This machine's is newer: Django's own flag for
# it is set as those versions set it.
WITHOUT_RETURNING = """
from django.db import connection
from django.db.models.expressions import DatabaseDefault
from config.db import insert_once
from notify.models import TriggerEvent
from subscribers.models import Subscriber
from tests.factories import ClientFactory

connection.features.can_return_columns_from_insert = False
client = ClientFactory()
ann = Subscriber(client=client, subscriber_id="ann")
field = TriggerEvent._meta.get_field("recheck_from")
event = TriggerEvent(
    client=client, workflow_id="w", mode="multicast", resource="b", transaction_id="t",
    recheck_from=DatabaseDefault(field.db_default, output_field=field),
)
found = {
    "inserted": [insert_once(ann), insert_once(event)],
    "again": insert_once(Subscriber(client=client, subscriber_id="ann")),
    "ids": [ann.pk == Subscriber.objects.get(subscriber_id="ann").pk, event.pk is not None],
    "default read back": event.recheck_from == TriggerEvent.objects.get().recheck_from,
}
"""


def test_an_insert_on_sqlite_without_returning_is_told_apart_from_a_conflict(
    tmp_path: Path,
) -> None:
    """Without RETURNING, Django writes none, and the read of the row it returns found
    none: every row inserted read as one that existed, a trigger as a repeat of itself
    (answered 201, never enqueued, run only by the reconciler a minute later)."""
    assert on_sqlite(tmp_path, WITHOUT_RETURNING) == {
        "inserted": [True, True],
        "again": False,
        "ids": [True, True],
        "default read back": True,
    }
