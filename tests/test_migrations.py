"""What the migrations do to a live database, beyond the state they leave."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

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
