"""What the migrations do to a live database, beyond the state they leave."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from django.apps import apps
from django.db import IntegrityError, connection, migrations, models
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.operations.base import Operation
from django.db.migrations.state import ProjectState
from django.utils import timezone

from config.schema_ops import AddIndexConcurrently
from notify.models import TriggerEvent
from subscribers.models import Topic
from tests.factories import ClientFactory, MessageFactory, StepFactory, SubscriberFactory
from tests.test_settings import ROOT

# The migrations that only drop a foreign key's own index (a composite starts with it).
INDEX_ONLY = [
    ("notify", "0012_foreign_keys_indexed_by_a_composite"),
    ("subscribers", "0003_foreign_keys_indexed_by_a_composite"),
    ("workflows", "0004_foreign_keys_indexed_by_a_composite"),
    ("messaging", "0003_foreign_keys_indexed_by_a_composite"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("app", "name"), INDEX_ONLY)
def test_dropping_a_foreign_keys_index_leaves_its_constraint_alone(app: str, name: str) -> None:
    """As AlterField(db_index=False), Django dropped each foreign key and added it again:
    ACCESS EXCLUSIVE on the notification, step and message tables (reads too) while
    PostgreSQL checked every row again, for an index that a DROP INDEX removes."""
    executor = MigrationExecutor(connection)
    migration = executor.loader.get_migration(app, name)
    for backwards in (False, True):
        sql = "\n".join(executor.loader.collect_sql([(migration, backwards)]))
        assert "CONSTRAINT" not in sql.upper(), sql
        assert "INDEX" in sql.upper(), sql


# The migrations that add an index to a table that was there before them, large in
# production (trigger events, notifications, messages, subscribers).
INDEX_ADDED = [
    ("messaging", "0002_message_client_created_index"),
    ("notify", "0007_trigger_event_processed_index"),
    ("notify", "0015_trigger_event_cancel_task_at"),
    ("notify", "0017_trigger_event_recheck_from"),
    ("subscribers", "0002_subscriber_upper_email_index"),
    ("subscribers", "0004_subscriber_client_updated_index"),
    ("subscribers", "0005_topic_subscription_created_index"),
    ("subscribers", "0008_topic_subscription_identifier_index"),
    ("workflows", "0005_notification_created_index"),
    ("workflows", "0006_notification_client_created_index"),
]
PROJECT_APPS = ["notify", "subscribers", "workflows", "messaging"]
# Written before RemoveIndexConcurrently, each dropping the index it replaces with a plain
# DROP INDEX (taken for a catalog change, though it waits for ACCESS EXCLUSIVE).
REPLACED_PLAINLY = {("notify", "0017_trigger_event_recheck_from")}


@pytest.mark.django_db(transaction=True)  # the operation refuses a transaction, even for SQL
@pytest.mark.parametrize(("app", "name"), INDEX_ADDED)
def test_an_index_added_to_a_table_is_built_and_dropped_concurrently(app: str, name: str) -> None:
    """A plain CREATE INDEX holds SHARE on the table for the whole build: every INSERT
    and UPDATE of it (a trigger, a send) waited minutes on a large table. An index the
    migration replaces is dropped (and built again on reverse) concurrently too: a plain
    DROP INDEX takes ACCESS EXCLUSIVE, and every query of the table, reads too, waits."""
    executor = MigrationExecutor(connection)
    migration = executor.loader.get_migration(app, name)
    forwards = executor.loader.collect_sql([(migration, False)])
    backwards = executor.loader.collect_sql([(migration, True)])

    created = [sql for sql in forwards if re.match(r"CREATE (UNIQUE )?INDEX", sql)]
    dropped = [sql for sql in backwards if sql.startswith("DROP INDEX")]
    assert created, forwards
    assert all(" INDEX CONCURRENTLY " in sql for sql in created), created
    assert dropped, backwards
    assert all(sql.startswith("DROP INDEX CONCURRENTLY ") for sql in dropped), dropped
    if (app, name) in REPLACED_PLAINLY:
        return
    replaced = [sql for sql in forwards if sql.startswith("DROP INDEX")]
    rebuilt = [sql for sql in backwards if re.match(r"CREATE (UNIQUE )?INDEX", sql)]
    assert all(" INDEX CONCURRENTLY " in sql for sql in (*replaced, *rebuilt)), forwards


def _locking_index_builds(
    app: str, migration: migrations.Migration, state: ProjectState
) -> list[str]:
    """The operations of `migration` (applied to `state`) that build an index on
    PostgreSQL with a plain CREATE INDEX (or a unique constraint) on a table it did not
    create, a table with rows; and an AddIndexConcurrently in an atomic migration, which
    PostgreSQL refuses."""
    created: set[str] = set()  # a table created in the same migration is empty
    found = []
    for operation in migration.operations:
        database_operations = (
            operation.database_operations
            if isinstance(operation, migrations.SeparateDatabaseAndState)
            else [operation]
        )
        for op in database_operations:
            if isinstance(op, migrations.CreateModel):
                created.add(op.name_lower)
            elif isinstance(op, AddIndexConcurrently):
                if migration.atomic:
                    found.append(f"{op.describe()} in an atomic migration")
            elif getattr(op, "model_name_lower", None) not in created and _locks(app, op, state):
                found.append(op.describe())
        operation.state_forwards(app, state)
    return found


def _locks(app: str, op: Operation, state: ProjectState) -> bool:
    """Whether `op` builds an index (one of its own, or of a unique constraint or
    field) with a plain CREATE INDEX."""
    if isinstance(op, migrations.AddIndex):
        return True
    if isinstance(op, migrations.AddConstraint):
        return isinstance(op.constraint, models.UniqueConstraint)
    if isinstance(op, migrations.AddField):
        return bool(op.field.db_index or op.field.unique)
    if isinstance(op, migrations.AlterField):
        old = state.models[app, op.model_name_lower].fields[op.name]
        indexed = op.field.db_index or op.field.unique
        return bool(indexed and not (old.db_index or old.unique))
    if isinstance(op, (migrations.AlterUniqueTogether, migrations.AlterIndexTogether)):
        return bool(op.option_value)
    if isinstance(op, migrations.RunSQL):
        return bool(re.search(r"CREATE\s+(UNIQUE\s+)?INDEX(?!\s+CONCURRENTLY)", str(op.sql), re.I))
    return False


def test_no_migration_builds_an_index_on_a_table_with_a_lock_on_its_writes() -> None:
    """So that a new migration (makemigrations writes a plain AddIndex) cannot bring the
    write lock back: its index is to be an AddIndexConcurrently of config.schema_ops."""
    loader = MigrationLoader(None, ignore_no_migrations=True)

    def before(app: str, name: str) -> ProjectState:
        return loader.project_state((app, name), at_end=False)

    found = {
        f"{app}.{name}": builds
        for (app, name), migration in loader.disk_migrations.items()
        if app in PROJECT_APPS
        and (builds := _locking_index_builds(app, migration, before(app, name)))
    }
    assert found == {}


def test_the_check_of_locking_index_builds_sees_them() -> None:
    """The check above can fail: a plain AddIndex, an indexed foreign key added, a unique
    constraint added to a table that has rows."""
    migration = migrations.Migration("0099_locks", "messaging")
    migration.operations = [
        migrations.AddIndex("message", models.Index(fields=["channel"], name="m_channel")),
        migrations.AddField(
            "message",
            "topic",
            models.ForeignKey("subscribers.Topic", models.CASCADE, null=True),
        ),
        migrations.AddConstraint(
            "message", models.UniqueConstraint(fields=["provider_message_id"], name="m_pmid")
        ),
    ]
    state = MigrationLoader(None, ignore_no_migrations=True).project_state()
    assert len(_locking_index_builds("messaging", migration, state)) == 3


@pytest.mark.django_db
def test_a_trigger_the_code_before_an_upgrade_accepts_goes_in_once_migrated() -> None:
    """An upgrade migrates while the web server and workers of the release before it
    still write (README), and the migrations may take minutes (an index built
    concurrently on a large table). A column added NOT NULL with no default in the
    database (0016's redelivered) refused every trigger that code inserted meanwhile: a
    500 for each, until the new release started."""
    loader = MigrationLoader(None, ignore_no_migrations=True)
    before = loader.project_state(("notify", "0015_trigger_event_cancel_task_at"))
    old_model = before.apps.get_model("notify", "TriggerEvent")

    old_model.objects.create(
        client_id=ClientFactory().pk, workflow_id="welcome", transaction_id="t-1", to=["ann"]
    )

    assert TriggerEvent.objects.get(transaction_id="t-1").redelivered == {}


def _rows_before(app: str, migration: str) -> Callable[..., models.Model]:
    """A function that inserts a row of `app`'s model as the release before `migration`
    inserts it: with the columns that release knows, none of those added since."""
    state = MigrationLoader(None, ignore_no_migrations=True).project_state((app, migration))

    def insert(model: str, **fields: object) -> models.Model:
        return state.apps.get_model(app, model).objects.create(**fields)

    return insert


def _subscription() -> dict[str, object]:
    subscriber = SubscriberFactory()
    topic = Topic.objects.create(client_id=subscriber.client_id, key="news")
    return {"topic_id": topic.pk, "subscriber_id": subscriber.pk}


def _message() -> dict[str, object]:
    step = StepFactory()
    return {
        "step_id": step.pk,
        "client_id": step.notification.client_id,
        "subscriber_id": step.notification.subscriber_id,
        "channel": "email",
        "provider": "django-email",
    }


# Each migration that adds a column NOT NULL since 0016's (the test above), the row the
# release before it inserts, and the column's value in that row once migrated.
ADDED_NOT_NULL = [
    (
        "messaging",
        "0004_message_subscriber_checked_first",
        "Message",
        _message,
        "action",
        {},
    ),
    (
        "notify",
        "0018_trigger_event_recheck_from_on_receipt",
        "BridgeWorkflow",
        lambda: {
            "client_id": ClientFactory().pk,
            "workflow_id": "w",
            "discovered_at": timezone.now(),
        },
        "payload_schema_translated",
        False,
    ),
    (
        "subscribers",
        "0005_topic_subscription_created_index",
        "Topic",
        lambda: {"client_id": ClientFactory().pk, "key": "news"},
        "updated_at",
        None,  # the database's now()
    ),
    (
        "subscribers",
        "0006_topic_updated_at",
        "TopicSubscription",
        _subscription,
        "identifier",
        "",
    ),
    ("subscribers", "0006_topic_updated_at", "TopicSubscription", _subscription, "name", ""),
    (
        "subscribers",
        "0009_topic_subscription_updated_at",
        "Subscriber",
        lambda: {"client_id": ClientFactory().pk, "subscriber_id": "ann"},
        "is_online",
        False,
    ),
]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("app", "before", "model", "fields", "column", "value"),
    ADDED_NOT_NULL,
    ids=[f"{app}.{model}.{column}" for app, _, model, _, column, _ in ADDED_NOT_NULL],
)
def test_a_row_the_release_before_a_new_column_inserts_goes_in_once_migrated(
    app: str,
    before: str,
    model: str,
    fields: Callable[[], dict[str, object]],
    column: str,
    value: object,
) -> None:
    """As 0016's redelivered (above): the release before a migration that adds a column
    NOT NULL inserts its rows without it while the upgrade migrates, and each would be
    refused (an API call's 500, a worker's task failing) unless the column has its default
    in the database, not only in the model, where Django keeps it."""
    row = _rows_before(app, before)(model, **fields())

    stored = getattr(apps.get_model(app, model).objects.get(pk=row.pk), column)
    assert stored == value if value is not None else stored is not None


ROUND_TRIP = """
import django
django.setup()
from django.core.management import call_command
from django.db import connection

def migrate(*args):
    call_command("migrate", *args, interactive=False, verbosity=0)
    print(" ".join(connection.introspection.table_names()))

migrate()
migrate("notify", "zero")  # the other apps' first migrations depend on notify's
migrate()
"""


def _project_tables(line: str) -> list[str]:
    return [table for table in line.split() if table.split("_")[0] in PROJECT_APPS]


@pytest.fixture(params=["sqlite", "postgresql"])
def throwaway_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database: a file of SQLite (`make run`), or one of PostgreSQL
    on the server of the tests' own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'norm.sqlite3'}"
        return
    server = connection.settings_dict
    name = f"{server['NAME']}_migrations"
    address = f"{quote(server['USER'])}:{quote(server['PASSWORD'] or '')}@{server['HOST']}:{server['PORT'] or 5432}"
    with psycopg.connect(f"postgresql://{address}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgres://{address}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_migrations_apply_from_zero_and_unapply_back_to_it(throwaway_database: str) -> None:
    """AddIndexConcurrently runs outside a transaction on PostgreSQL, and is a plain
    AddIndex on SQLite, where CONCURRENTLY does not exist. Each migrate is run as
    `manage.py migrate` runs it, in one process: three took ten seconds of the suite."""
    lines = _run_on(throwaway_database, ROUND_TRIP)
    applied, unapplied, again = map(_project_tables, lines)

    assert "messaging_message" in applied
    assert unapplied == []
    # Nothing of the first run is left in the way of the second (an index, a column).
    assert again == applied


# The release before 0017 (which sets no recheck_from) fans an event out while 0017
# builds its index, as an upgrade runs while the web server and workers write (README).
FANNED_OUT_DURING_THE_BUILD = """
import django
django.setup()
from django.core.management import call_command
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.utils import timezone

from config import schema_ops

def migrate(*args):
    call_command("migrate", *args, interactive=False, verbosity=0)

migrate("notify", "0016_trigger_event_redelivered")
before = MigrationLoader(connection).project_state(("notify", "0016_trigger_event_redelivered"))
build = schema_ops.AddIndexConcurrently.database_forwards

def fanned_out_meanwhile(*args, **kwargs):
    client = before.apps.get_model("notify", "Client").objects.create(name="c", bridge_url="b")
    before.apps.get_model("notify", "TriggerEvent").objects.create(
        client=client, workflow_id="w", transaction_id="t", to=["ann", "bob"],
        status="processed", recipients=2, processed_at=timezone.now(),
    )
    build(*args, **kwargs)

schema_ops.AddIndexConcurrently.database_forwards = fanned_out_meanwhile
migrate("notify", "0017_trigger_event_recheck_from")
with connection.cursor() as cursor:
    cursor.execute("SELECT recheck_from = processed_at FROM notify_triggerevent")
    print(bool(cursor.fetchone()[0]))  # NULL (None): no recheck_from
"""


def test_an_event_fanned_out_while_the_upgrade_builds_its_index_is_still_checked(
    throwaway_database: str,
) -> None:
    """0017 gave the events of the last hour their recheck_from (where the reconciler's
    check for a fan-out left short starts) before building its index, minutes on a large
    table, while the release before still fanned events out without one: those the
    reconciler never checked, and a recipient whose command the broker lost meanwhile
    never got the notification."""
    assert _run_on(throwaway_database, FANNED_OUT_DURING_THE_BUILD) == ["True"]


# The release before 0017 stores events and fans them out while the upgrade migrates
# past 0018, and after (until its processes are restarted): each it fanned out is still
# checked, whenever it was stored.
FANNED_OUT_BY_THE_RELEASE_BEFORE = """
from datetime import timedelta

import django
django.setup()
from django.core.management import call_command
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.utils import timezone

def migrate(*args):
    call_command("migrate", *args, interactive=False, verbosity=0)

migrate("notify", "0016_trigger_event_redelivered")
before = MigrationLoader(connection).project_state(("notify", "0016_trigger_event_redelivered"))
Event = before.apps.get_model("notify", "TriggerEvent")
client = before.apps.get_model("notify", "Client").objects.create(name="c", bridge_url="b")

def stored(name):
    return Event.objects.create(client=client, workflow_id="w", transaction_id=name, to=["ann"])

def fanned_out(event):
    Event.objects.filter(pk=event.pk).update(
        status="processed", recipients=1, processed_at=timezone.now()
    )

migrate("notify", "0017_trigger_event_recheck_from")
waiting = stored("stored before 0018, fanned out after")
fanned_out(stored("fanned out between 0017 and 0018"))
migrate("notify", "0018_trigger_event_recheck_from_on_receipt")
fanned_out(waiting)
fanned_out(stored("stored and fanned out after 0018"))
after = MigrationLoader(connection).project_state(
    ("notify", "0018_trigger_event_recheck_from_on_receipt")
)
checked = after.apps.get_model("notify", "TriggerEvent").objects.filter(
    recheck_from__gt=timezone.now() - timedelta(hours=1)  # the reconciler's window
)
print(*checked.order_by("id").values_list("transaction_id", flat=True), sep="\\n")
"""


def test_an_event_the_release_before_fans_out_during_and_after_the_upgrade_is_still_checked(
    throwaway_database: str,
) -> None:
    """The release before 0017 sets no recheck_from, and its workers fan events out until
    they are restarted after the upgrade: the reconciler never checked those events, so a
    recipient whose command the broker lost meanwhile never got the notification."""
    assert _run_on(throwaway_database, FANNED_OUT_BY_THE_RELEASE_BEFORE) == [
        "stored before 0018, fanned out after",
        "fanned out between 0017 and 0018",
        "stored and fanned out after 0018",
    ]


# 0008 drops the payload column 0007 unmapped; unapplied, it puts it back with 0007's
# default, which the release before 0007 reads.
PAYLOAD_DROPPED = """
import django
django.setup()
from django.core.management import call_command
from django.db import connection
from django.db.migrations.loader import MigrationLoader

from tests.factories import NotificationFactory
from workflows.models import Notification

def migrate(*args):
    call_command("migrate", *args, interactive=False, verbosity=0)

def columns():
    with connection.cursor() as cursor:
        table = connection.introspection.get_table_description(cursor, "workflows_notification")
    return "payload" in [column.name for column in table]

migrate()
made = NotificationFactory()
print(columns())
migrate("workflows", "0007_notification_payload_unmapped")
print(columns())
before = MigrationLoader(connection).project_state(("workflows", "0006_notification_client_created_index"))
print(before.apps.get_model("workflows", "Notification").objects.get(pk=made.pk).payload)
migrate()
print(columns(), Notification.objects.filter(pk=made.pk).exists())
"""


def test_the_payloads_column_is_dropped_and_comes_back_with_its_default(
    throwaway_database: str,
) -> None:
    """A notification's payload is its trigger's: 0008 drops the column of the copies
    older releases made. Unapplied, it adds the column back NOT NULL with the default
    that 0007 gave it, so that the rows made meanwhile read empty to the release before
    0007, which still maps it."""
    assert _run_on(throwaway_database, PAYLOAD_DROPPED) == ["False", "True", "{}", "False True"]


def _run_on(database: str, script: str) -> list[str]:
    """The lines `script` prints, run in a process of its own on `database`, as
    `manage.py migrate` runs (a migration's state is the process's)."""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _messages_index_migration() -> tuple[str, Callable[[], None]]:
    """The first migration that adds an index to a table (messages'): its index's name,
    and its operation run forwards as migrate runs it."""
    app, name = INDEX_ADDED[0]
    executor = MigrationExecutor(connection)
    migration = executor.loader.get_migration(app, name)
    (operation,) = migration.operations
    before = executor.loader.project_state((app, name), at_end=False)
    after = executor.loader.project_state((app, name), at_end=True)

    def forwards() -> None:
        with connection.schema_editor(atomic=migration.atomic) as editor:
            operation.database_forwards(app, editor, before, after)

    return operation.index.name, forwards


@pytest.mark.django_db(transaction=True)
def test_a_write_to_the_table_goes_through_while_its_index_is_built() -> None:
    """A worker's transaction that wrote a message is still open: the build waits for it
    to end. As a plain CREATE INDEX it queued for SHARE, and every INSERT behind it queued
    too (the API and the workers stalled for the whole upgrade); concurrently, an INSERT
    is not held up by it."""
    index, forwards = _messages_index_migration()
    written = MessageFactory()
    step = StepFactory(notification=written.step.notification, type="in_app")
    with connection.cursor() as cursor:  # the index the migration made for the tests
        cursor.execute(f'DROP INDEX "{index}"')

    server = connection.settings_dict
    writer = psycopg.connect(
        dbname=server["NAME"], user=server["USER"], password=server["PASSWORD"] or None,
        host=server["HOST"], port=server["PORT"] or 5432,
    )  # fmt: skip
    writer.execute("UPDATE messaging_message SET status = 'read' WHERE id = %s", [written.id])
    errors: list[BaseException] = []

    def build() -> None:
        try:
            forwards()
        except BaseException as error:  # handed to the test's thread
            errors.append(error)
        finally:
            connection.close()

    builder = threading.Thread(target=build)
    builder.start()
    try:
        with connection.cursor() as cursor:
            for _ in range(100):  # the build waits for the writer's transaction
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'"
                    " AND query LIKE 'CREATE INDEX%%'"
                )
                if cursor.fetchone()[0]:
                    break
                time.sleep(0.1)
            else:
                pytest.fail("the index build never waited for the open transaction")
            cursor.execute("SET lock_timeout = '2s'")
            try:
                MessageFactory(step=step)
            finally:
                cursor.execute("RESET lock_timeout")
    finally:
        writer.rollback()
        writer.close()
        builder.join(60)
    assert not builder.is_alive()
    assert errors == []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = %s::regclass",
            [index],
        )
        assert cursor.fetchone() == (True,)


@pytest.mark.django_db(transaction=True)
def test_an_index_whose_concurrent_build_failed_is_built_again() -> None:
    """A failed CREATE INDEX CONCURRENTLY leaves its index INVALID, not rolled back: the
    migration, run again, failed on its name (`relation ... already exists`)."""
    index, forwards = _messages_index_migration()
    first = MessageFactory()
    MessageFactory(step=StepFactory(notification=first.step.notification, type="in_app"))
    with connection.cursor() as cursor:
        cursor.execute(f'DROP INDEX "{index}"')
        # A build that fails half-way: the two messages share a client.
        with pytest.raises(IntegrityError):
            cursor.execute(
                f'CREATE UNIQUE INDEX CONCURRENTLY "{index}" ON messaging_message (client_id)'
            )

    try:
        forwards()
    except Exception:
        with connection.cursor() as cursor:  # its uniqueness, in the other tests' way
            cursor.execute(f'DROP INDEX "{index}"')
        raise

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indisvalid, pg_get_indexdef(indexrelid) FROM pg_index"
            " WHERE indexrelid = %s::regclass",
            [index],
        )
        valid, definition = cursor.fetchone()
    assert valid
    assert definition.endswith("USING btree (client_id, created_at)"), definition


# 0006 builds the client's new index, then drops the old one: `atomic = False`, so a
# drop that fails (a lock_timeout, a deploy killed while DROP INDEX CONCURRENTLY waits
# for a long transaction) leaves the new index built and the migration unrecorded.
DROP_FAILED_AFTER_THE_BUILD = """
import django
django.setup()
from django.core.management import call_command
from django.db import connection

from config import schema_ops

def migrate(*args):
    call_command("migrate", *args, interactive=False, verbosity=0)

migrate("workflows", "0005_notification_created_index")
drop = schema_ops.RemoveIndexConcurrently.database_forwards

def canceled(*args, **kwargs):
    raise RuntimeError("canceling statement due to lock timeout")

schema_ops.RemoveIndexConcurrently.database_forwards = canceled
try:
    migrate("workflows", "0006_notification_client_created_index")
except RuntimeError:
    pass
schema_ops.RemoveIndexConcurrently.database_forwards = drop
migrate("workflows", "0006_notification_client_created_index")
with connection.cursor() as cursor:
    indexes = connection.introspection.get_constraints(cursor, "workflows_notification")
print(*sorted(name for name, index in indexes.items() if index["index"] and "client" in name), sep="\\n")
"""


def test_a_migration_whose_drop_failed_after_its_build_is_run_again(
    throwaway_database: str,
) -> None:
    """0006's index was built, then the drop of the one it replaces failed: migrate, run
    again, failed on the new index's name (`relation ... already exists`), for good,
    until someone dropped it by hand."""
    assert _run_on(throwaway_database, DROP_FAILED_AFTER_THE_BUILD) == [
        "notification_client_created"
    ]
