"""config.memo: what a process may reuse of rows its hot paths read on every call."""

from __future__ import annotations

from typing import Any

from config.memo import Memo, clear_all


class Loads:
    def __init__(self, *values: Any) -> None:
        self.values, self.count = list(values), 0

    def __call__(self) -> Any:
        self.count += 1
        return self.values.pop(0)


def test_a_value_is_reused_until_it_is_older_than_the_setting(settings: Any) -> None:
    memo: Memo[str] = Memo()
    load = Loads("first", "second")
    settings.NORM_PROCESS_CACHE_SECONDS = 60
    assert memo.get("k", load) == "first"
    assert memo.get("k", load) == "first"
    assert load.count == 1

    settings.NORM_PROCESS_CACHE_SECONDS = 0  # every value is now too old
    assert memo.get("k", load) == "second"
    assert load.count == 2


def test_fresh_reads_again_and_keeps_the_new_value(settings: Any) -> None:
    settings.NORM_PROCESS_CACHE_SECONDS = 60
    memo: Memo[str] = Memo()
    load = Loads("old", "new")
    memo.get("k", load)
    assert memo.get("k", load, fresh=True) == "new"
    assert memo.get("k", load) == "new" and load.count == 2


def test_nothing_found_is_not_remembered(settings: Any) -> None:
    """A workflow or key that does not exist yet is looked for again on the next call."""
    settings.NORM_PROCESS_CACHE_SECONDS = 60
    memo: Memo[str] = Memo()
    load = Loads(None, "created")
    assert memo.get("k", load) is None
    assert memo.get("k", load) == "created"


def test_a_value_found_gone_by_a_fresh_read_is_forgotten(settings: Any) -> None:
    """A row deleted since it was remembered (a key revoked, a workflow removed), found
    gone by a fresh read: the next call does not get the old row back."""
    settings.NORM_PROCESS_CACHE_SECONDS = 60
    memo: Memo[str] = Memo()
    load = Loads("row", None, None)
    assert memo.get("k", load) == "row"
    assert memo.get("k", load, fresh=True) is None
    assert memo.get("k", load) is None and load.count == 3


def test_entries_are_bounded_and_clear_all_forgets_every_memo(settings: Any) -> None:
    settings.NORM_PROCESS_CACHE_SECONDS = 60
    memo: Memo[int] = Memo()
    memo.MAX_ENTRIES = 3
    for n in range(4):
        memo.get(n, lambda n=n: n)
    assert len(memo._entries) <= 3

    load = Loads(1, 2)
    memo.get("k", load)
    clear_all()
    assert memo.get("k", load) == 2
