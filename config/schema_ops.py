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
