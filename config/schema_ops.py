"""Migration operations the apps' migrations share."""

from __future__ import annotations

from typing import Any

from django.db import migrations


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
