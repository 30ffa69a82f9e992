"""Database helpers the pipeline's hot paths share."""

from __future__ import annotations

import re
from typing import Any, cast

from django.db import connections, router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.db.models import CharField, Model, TextField, lookups
from django.db.models.constants import OnConflict
from django.db.models.expressions import DatabaseDefault
from django.db.models.sql import InsertQuery
from django.dispatch import receiver


def insert_once(row: Model) -> bool:
    """INSERT `row`; False when a unique constraint says it exists already.

    One statement in or out of a transaction: `INSERT ... ON CONFLICT DO NOTHING`
    (SQLite: INSERT OR IGNORE), returning the new id when the database makes it.
    Catching the IntegrityError of a plain INSERT needs a savepoint inside a transaction
    (SAVEPOINT and RELEASE, two more round trips) to keep the transaction usable, and
    the subscriber worker inserts twice in one.

    The INSERT is the one `save(force_insert=True)` makes (Django's `Model._save_table`),
    with the conflict ignored; no save signals are sent: norm has no receivers. Only a
    unique constraint is ignored: a NOT NULL or CHECK violation (a bug) raises.
    """
    meta = row._meta
    fields = [f for f in meta.local_concrete_fields if not f.generated]
    if row.pk is None:
        fields = [f for f in fields if f is not meta.auto_field]
    using = router.db_for_write(type(row), instance=row)
    database = connections[using]
    # Django writes SQLite's INSERT OR IGNORE, which passes over a NOT NULL or CHECK
    # violation too, read then as a row that exists: under `make run` a bug's message
    # INSERT left its step claimed and unexplained, until the reconciler took it for a
    # lost task. SQLite's ON CONFLICT DO NOTHING (3.24) ignores a unique one alone, as
    # PostgreSQL's does.
    sqlite = database.vendor == "sqlite"
    query = InsertQuery(type(row), on_conflict=None if sqlite else OnConflict.IGNORE)
    query.insert_values(fields, [row])
    compiler = query.get_compiler(using=using)
    # Only what the database makes (an auto id, a default the row left to it): a pk set
    # here (a UUID) comes back as it went, and a row of no row back through Django's
    # converters fails on SQLite. Django would return every field with a database
    # default, each one more column to read back and convert on every trigger.
    made = [
        field
        for field in meta.db_returning_fields
        if field is meta.auto_field or isinstance(getattr(row, field.attname), DatabaseDefault)
    ]
    # RETURNING needs SQLite 3.35, and Django runs on 3.31 (Ubuntu 20.04's; Debian 11 has
    # 3.34). There Django writes none, and reading the row it would return found none:
    # each row inserted read as one that existed, and `make run` answered each trigger
    # 201 and left it, as a repeat of itself, to the reconciler a minute later. Without
    # it: the count of rows inserted, SQLite's last id, and the defaults read back.
    returning = database.features.can_return_columns_from_insert
    compiler.returning_fields = made if row.pk is None and returning else []
    left = [f.attname for f in fields if isinstance(getattr(row, f.attname), DatabaseDefault)]
    with database.cursor() as cursor:
        for sql, params in compiler.as_sql():
            if sqlite:
                head, returning, tail = sql.partition(" RETURNING ")
                sql = f"{head} ON CONFLICT DO NOTHING{returning}{tail}"
            cursor.execute(sql, params)
        if compiler.returning_fields:
            returned = cursor.fetchone()  # no row: it exists already
            if returned is None:
                return False
            for value, field in zip(returned, compiler.returning_fields, strict=True):
                setattr(row, field.attname, value)
        elif cursor.rowcount != 1:
            return False
        elif not returning and (auto := meta.auto_field) is not None and row.pk is None:
            last = database.ops.last_insert_id(cursor, meta.db_table, auto.column)
            setattr(row, auto.attname, last)
    if left and not returning:
        row.refresh_from_db(using=using, fields=left)
    row._state.adding, row._state.db = False, using
    return True


# What PostgreSQL's text and jsonb cannot hold: NUL, and a lone UTF-16 surrogate
# ("\ud800"), which JSON can escape and Python decodes, but which has no UTF-8 form.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` another system wrote (a bridge's error) with each character PostgreSQL
    cannot hold as U+FFFD: a JavaScript bridge that cuts its message by UTF-16 units
    leaves half an emoji, and the row's UPDATE failed with it."""
    return UNSTORABLE.sub("\ufffd", text)


def bounded(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, an ellipsis marking the cut: a reason stored on a
    row, which the admin and every page of the API that lists the row show."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


# A row's id as a caller writes it: 1 to 18 ASCII digits. str.isdigit() takes "²", which
# int() refuses; int() refuses more than 4,300 digits (ValueError, a 500); and more than
# 18 may pass bigint. None of those is an id.
_ROW_ID = re.compile(r"[0-9]{1,18}")


def row_id(text: str) -> int | None:
    """`text` as a row's bigint id; None when it can be none, which finds nothing."""
    return int(text) if _ROW_ID.fullmatch(text) else None


def error_text(exc: Exception) -> str:
    """An exception as a reason to read: PostgreSQL's message and detail, not the failed
    statement it quotes (the values in it); otherwise its type and its message's first
    line. Not its repr, which the admin and the API showed as DataError('...\\nLINE 1: ...')."""
    diag = getattr(exc.__cause__, "diag", None)
    if diag is not None and diag.message_primary:
        detail = f" ({diag.message_detail})" if diag.message_detail else ""
        return diag.message_primary + detail
    line = next(iter(str(exc).splitlines()), "")
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


# Case-insensitive lookups on SQLite. Django's iexact, icontains, istartswith and
# iendswith are LIKE there, which folds ASCII letters only: "MÜLLER" finds "Müller" on
# PostgreSQL (UPPER() on both sides) and nothing on SQLite, the `make run` default.
# On SQLite both sides go through NORM_UPPER, Python's upper case of each character
# (one for one, as PostgreSQL's UPPER: "ß" stays "ß"); PostgreSQL's SQL is unchanged.


def _upper(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    upper = value.upper()
    if len(upper) == len(value):
        return upper
    return "".join(c if len(c.upper()) != 1 else c.upper() for c in value)


@receiver(connection_created)
def _register_upper(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    if connection.vendor == "sqlite":
        connection.connection.create_function("NORM_UPPER", 1, _upper, deterministic=True)


class _UnicodeCaseOnSQLite:
    def as_sqlite(self, compiler: Any, connection: BaseDatabaseWrapper) -> tuple[str, list[Any]]:
        lookup = cast(lookups.BuiltinLookup, self)
        if not lookup.rhs_is_direct_value():
            return lookup.as_sql(compiler, connection)
        lhs_sql, params = lookup.process_lhs(compiler, connection)
        rhs_sql, rhs_params = lookup.process_rhs(compiler, connection)
        rhs_sql = lookup.get_rhs_op(connection, f"NORM_UPPER({rhs_sql})")
        return f"NORM_UPPER({lhs_sql}) {rhs_sql}", [*params, *rhs_params]


class UnicodeIExact(_UnicodeCaseOnSQLite, lookups.IExact):
    pass


class UnicodeIContains(_UnicodeCaseOnSQLite, lookups.IContains):
    pass


class UnicodeIStartsWith(_UnicodeCaseOnSQLite, lookups.IStartsWith):
    pass


class UnicodeIEndsWith(_UnicodeCaseOnSQLite, lookups.IEndsWith):
    pass


for _field in (CharField, TextField):
    for _lookup in (UnicodeIExact, UnicodeIContains, UnicodeIStartsWith, UnicodeIEndsWith):
        _field.register_lookup(_lookup)
