"""Migration operations the apps' migrations share."""

from __future__ import annotations

from typing import Any

from django.contrib.postgres import operations as postgres
from django.db import migrations


class _PlainOffPostgreSQL:
    """The concurrent operation on PostgreSQL; elsewhere (SQLite: `make run`), which has
    no CONCURRENTLY, the plain one (`plain`) it extends."""

    plain: Any

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        if schema_editor.connection.vendor == "postgresql":
            # A mixin: the operation it is mixed into has it (mypy sees only `object`).
            super().database_forwards(app_label, schema_editor, from_state, to_state)  # type: ignore[misc]
        else:
            self.plain.database_forwards(self, app_label, schema_editor, from_state, to_state)

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        if schema_editor.connection.vendor == "postgresql":
            # A mixin, as above.
            super().database_backwards(app_label, schema_editor, from_state, to_state)  # type: ignore[misc]
        else:
            self.plain.database_backwards(self, app_label, schema_editor, from_state, to_state)


class AddIndexConcurrently(_PlainOffPostgreSQL, postgres.AddIndexConcurrently):
    """An AddIndex built with CREATE INDEX CONCURRENTLY on PostgreSQL (and dropped with
    DROP INDEX CONCURRENTLY on reverse); a plain AddIndex elsewhere, where SQLite has no
    such statement. A plain CREATE INDEX holds SHARE on the table for the whole build:
    every trigger, send and claim (INSERT, UPDATE) waited for it, minutes on a table of
    millions of rows, and the API's clients timed out and retried. Its migration needs
    `atomic = False`, as PostgreSQL builds concurrently only outside a transaction; the
    migration's state is that of an AddIndex."""

    plain = migrations.AddIndex

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        model = to_state.apps.get_model(app_label, self.model_name)
        if schema_editor.connection.vendor == "postgresql":
            self._failed_build_dropped(schema_editor, model)
        if not self._built(schema_editor, model):
            super().database_forwards(app_label, schema_editor, from_state, to_state)

    def _failed_build_dropped(self, schema_editor: Any, model: Any) -> None:
        """A concurrent build that failed (canceled by a statement_timeout, a deadlock)
        leaves its index behind, INVALID, outside the transaction that would have undone
        it: the next migrate's CREATE INDEX then failed on its name, for good. Dropped, it
        is built again."""
        if schema_editor.collect_sql:  # sqlmigrate: no database to look at
            return
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(
                "SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
                [schema_editor.quote_name(self.index.name)],
            )
            invalid = cursor.fetchone()
        if invalid and invalid[0]:
            schema_editor.remove_index(model, self.index, concurrently=True)

    def _built(self, schema_editor: Any, model: Any) -> bool:
        """Whether a run of this migration that failed after it (its migration is not
        atomic, and is recorded only at its end) built the index already: a later
        operation that failed (a DROP INDEX CONCURRENTLY canceled by a lock_timeout, or
        killed while it waited for a long transaction) left it, and migrate, run again,
        failed on its name for good. An invalid one is dropped before (above)."""
        if schema_editor.collect_sql:  # sqlmigrate: no database to look at
            return False
        connection = schema_editor.connection
        with connection.cursor() as cursor:
            found = connection.introspection.get_constraints(cursor, model._meta.db_table)
        return self.index.name in found

    def describe(self) -> str:
        # Django's lists the index's fields, of which an expression index has none.
        return f"{migrations.AddIndex.describe(self)}, concurrently on PostgreSQL"


class RemoveIndexConcurrently(_PlainOffPostgreSQL, postgres.RemoveIndexConcurrently):
    """A RemoveIndex dropped with DROP INDEX CONCURRENTLY on PostgreSQL (and built again
    concurrently on reverse); a plain RemoveIndex elsewhere. A plain DROP INDEX takes
    ACCESS EXCLUSIVE on the table, for which it waits behind every query under way while
    every one after it (reads too) waits for it. Its migration needs `atomic = False`."""

    plain = migrations.RemoveIndex


def own_index_dropped(
    app_label: str, model_name: str, name: str, field: Any, index: str
) -> migrations.SeparateDatabaseAndState:
    """The foreign key `name` of `model_name` loses its own index (`index`, the name
    Django gave it), where a composite index starting with it serves its lookups; its
    constraint stays. As an AlterField(db_index=False), Django also dropped the foreign
    key constraint and added it again: ACCESS EXCLUSIVE on the table (reads too) while
    PostgreSQL checked every row."""
    table, column = f"{app_label}_{model_name}", f"{name}_id"
    return migrations.SeparateDatabaseAndState(
        state_operations=[migrations.AlterField(model_name=model_name, name=name, field=field)],
        database_operations=[
            migrations.RunSQL(
                f'DROP INDEX IF EXISTS "{index}"',
                reverse_sql=f'CREATE INDEX "{index}" ON "{table}" ("{column}")',
            )
        ],
    )


def foreign_key_checked_per_statement(
    app_label: str, model_name: str, name: str
) -> migrations.RunPython:
    """The foreign key `name` of `model_name` checked when each statement ends (DEFERRABLE
    INITIALLY IMMEDIATE) rather than at commit, as Django makes them: before the
    table's other foreign keys, whose checks wait for the commit. The referenced row
    is then locked (KEY SHARE) ahead of the others. A catalog change on PostgreSQL
    (ACCESS EXCLUSIVE on the table for that, no scan); nothing on SQLite, which locks
    the whole database. Django does not model it: an operation that drops and adds the
    constraint again (an AlterField of it) makes it deferred again."""

    def alter(initially: str) -> Any:
        def run(apps: Any, schema_editor: Any) -> None:
            if schema_editor.connection.vendor != "postgresql":
                return
            model = apps.get_model(app_label, model_name)
            column = model._meta.get_field(name).column
            (constraint,) = schema_editor._constraint_names(model, [column], foreign_key=True)
            quote = schema_editor.quote_name
            schema_editor.execute(
                f"ALTER TABLE {quote(model._meta.db_table)} ALTER CONSTRAINT"
                f" {quote(constraint)} DEFERRABLE INITIALLY {initially}"
            )

        return run

    return migrations.RunPython(alter("IMMEDIATE"), alter("DEFERRED"))
