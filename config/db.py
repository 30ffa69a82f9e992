"""Database helpers the pipeline's hot paths share."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.db.models import Model


def insert_once(row: Model) -> bool:
    """INSERT `row`; False when a unique constraint says it exists already.

    In autocommit (a request, a task) the INSERT is its own transaction: one round
    trip, where atomic() would add BEGIN and COMMIT. Inside a transaction, a savepoint
    keeps the outer one usable after a conflict.
    """
    try:
        if transaction.get_connection().in_atomic_block:
            with transaction.atomic():
                row.save(force_insert=True)
        else:
            row.save(force_insert=True)
    except IntegrityError:
        return False
    return True
