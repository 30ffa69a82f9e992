"""When a delay step is due, from its outputs: a regular delay's amount, a timed one's
cron. No database: `now` is fixed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from workflows.delays import UnsupportedDelay, delay_until

NOW = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)  # a Wednesday, noon


def at(day: int, hour: int, minute: int = 0, second: int = 0, month: int = 3) -> datetime:
    return datetime(2026, month, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    ("cron", "due"),
    [
        ("*/15 * * * *", at(4, 12, 15)),
        ("0 9 * * *", at(5, 9)),  # past today's nine: tomorrow's
        ("30 9 * * 1", at(9, 9, 30)),  # the next Monday
        ("0 0 * * 0", at(8, 0)),  # Sunday, as 0
        ("0 0 * * 7", at(8, 0)),  # and as 7
        ("0 9 * * MON-FRI", at(5, 9)),
        ("0 8 * * SAT,SUN", at(7, 8)),
        ("0 0 1 * *", at(1, 0, month=4)),
        ("0 9 5 * FRI", at(5, 9)),  # the 5th or a Friday, as cron has it: Thursday the 5th
        ("0 0 L * *", at(31, 0)),  # the month's last day
        ("30 0 12 * * *", at(4, 12, 0, 30)),  # six fields: seconds first, as Novu takes
        (" 0  12 * * * ", at(5, 12)),  # spaces around and between the fields
        # cron-parser's nicknames, as Novu takes them
        ("@yearly", datetime(2027, 1, 1, tzinfo=UTC)),
        ("@annually", datetime(2027, 1, 1, tzinfo=UTC)),
        ("@monthly", at(1, 0, month=4)),
        ("@weekly", at(8, 0)),  # Sunday
        (" @daily ", at(5, 0)),
        ("@hourly", at(4, 13)),
    ],
)
def test_a_timed_delay_is_due_at_the_crons_next_fire_in_utc(cron: str, due: datetime) -> None:
    assert delay_until({"type": "timed", "cron": cron}, now=NOW) == due


@pytest.mark.parametrize(
    ("cron", "due"),
    [
        ("0 9 ? * MON-FRI", at(5, 9)),
        ("0 0 1 * ?", at(1, 0, month=4)),
        ("0 30 9 ? * *", at(5, 9, 30)),  # six fields
        ("0 9 ? * 1", at(9, 9)),  # not "the 1st or a Monday": ? is any day, as *
    ],
)
def test_a_question_mark_for_the_day_is_any_day_as_cron_parser_takes_it(
    cron: str, due: datetime
) -> None:
    """cron-parser, which Novu's worker reads a timed delay's cron with, takes Quartz's `?`
    in the day-of-month and day-of-week fields as `*`: refused here ("bad day-of-month"),
    a workflow whose delay Novu runs failed for good with UnsupportedDelay."""
    assert delay_until({"type": "timed", "cron": cron}, now=NOW) == due


@pytest.mark.parametrize("cron", ["0 12 * * *", "0 12 * * WED", "* * * * * *"])
@pytest.mark.parametrize("microsecond", [0, 400_000])
def test_a_timed_delay_reached_as_its_cron_fires_waits_for_the_next_fire(
    cron: str, microsecond: int
) -> None:
    """Reached at noon, a noon cron fires next tomorrow (or in a week): the fire at
    `now` is the one that is passing, not one to wait for."""
    due = delay_until({"type": "timed", "cron": cron}, now=NOW.replace(microsecond=microsecond))

    assert (
        due
        == {
            "0 12 * * *": at(5, 12),
            "0 12 * * WED": at(11, 12),
            "* * * * * *": at(4, 12, 0, 1),
        }[cron]
    )


def test_a_cron_without_a_type_is_a_timed_delay() -> None:
    """Novu's schema leaves `type` optional, and its worker takes a delay with a cron
    for a timed one."""
    assert delay_until({"cron": "0 9 * * *"}, now=NOW) == at(5, 9)


@pytest.mark.parametrize(
    ("zone", "due"),
    [
        ("America/New_York", at(4, 14)),  # nine in New York (UTC-5), later today
        ("Europe/Berlin", at(5, 8)),  # past nine in Berlin (UTC+1): tomorrow's
        ("Asia/Kolkata", at(5, 3, 30)),  # UTC+5:30
        ("", at(5, 9)),  # no time zone: UTC
        ("Mars/Olympus_Mons", at(5, 9)),  # none the tz database knows: UTC
    ],
)
def test_a_timed_delay_fires_on_the_subscribers_clock(zone: str, due: datetime) -> None:
    """As in Novu, whose worker reads the cron in the subscriber's time zone."""
    assert delay_until({"type": "timed", "cron": "0 9 * * *"}, now=NOW, zone=zone) == due


def test_a_timed_delay_across_a_clock_change_fires_at_the_wall_clock_time() -> None:
    """Nine in Berlin is 8:00 UTC in winter and 7:00 in summer (from 29 March 2026)."""
    now = at(28, 12)
    due = delay_until({"type": "timed", "cron": "0 9 * * *"}, now=now, zone="Europe/Berlin")
    assert due == at(29, 7)


@pytest.mark.parametrize(
    ("now", "due"),
    [
        (at(25, 0, 10, month=10), at(25, 0, 30, month=10)),  # 2:10 the first time: 2:30
        (at(25, 1, 10, month=10), at(26, 1, 30, month=10)),  # 2:10 again: tomorrow's 2:30
    ],
)
def test_a_timed_delay_in_the_hour_the_clock_repeats_fires_once_and_never_in_the_past(
    now: datetime, due: datetime
) -> None:
    """Berlin's clock goes from 3:00 back to 2:00 on 25 October 2026 (1:00 UTC). A daily
    2:30 fires the first time the clock reads it, as cron does; reached in the second
    pass, it has fired already, and waits for tomorrow's (it was due in the past)."""
    due_at = delay_until({"type": "timed", "cron": "30 2 * * *"}, now=now, zone="Europe/Berlin")
    assert due_at == due


FIELDS = "(minute hour day-of-month month day-of-week, or seconds first)"


@pytest.mark.parametrize(
    ("outputs", "reason"),
    [
        (
            {"type": "timed", "cron": "0 9 * *"},
            f"delay cron '0 9 * *' is not a valid cron expression: wrong number of fields {FIELDS}",
        ),
        (
            {"type": "timed", "cron": "0 0 9 * * * 2026"},
            "delay cron '0 0 9 * * * 2026' is not a valid cron expression: wrong number of "
            f"fields {FIELDS}",
        ),
        (
            {"type": "timed", "cron": ""},
            f"delay cron '' is not a valid cron expression: wrong number of fields {FIELDS}",
        ),
        (
            {"type": "timed", "cron": "60 9 * * *"},
            "delay cron '60 9 * * *' is not a valid cron expression: bad minute",
        ),
        (
            {"type": "timed", "cron": "0 24 * * *"},
            "delay cron '0 24 * * *' is not a valid cron expression: bad hour",
        ),
        (
            {"type": "timed", "cron": "0 9 32 * *"},
            "delay cron '0 9 32 * *' is not a valid cron expression: bad day-of-month",
        ),
        (
            {"type": "timed", "cron": "0 9 30 2 *"},  # 30 February
            "delay cron '0 9 30 2 *' is not a valid cron expression: bad day-of-month",
        ),
        (
            {"type": "timed", "cron": "0 9 * 13 *"},
            "delay cron '0 9 * 13 *' is not a valid cron expression: bad month",
        ),
        (
            {"type": "timed", "cron": "0 9 * * 8"},
            "delay cron '0 9 * * 8' is not a valid cron expression: bad day-of-week",
        ),
        (
            {"type": "timed", "cron": "@reboot"},
            f"delay cron '@reboot' is not a valid cron expression: wrong number of fields {FIELDS}",
        ),
        (
            # the 1st or the 21st, when it is the month's last Monday
            {"type": "timed", "cron": "* * */20 * 1L"},
            "delay cron '* * */20 * 1L' never fires (not in 50 years)",
        ),
        (
            # JSON's true, which Python counts as the number 1: no day's wait
            {"amount": True, "unit": "days"},
            "delay amount must be a non-negative number, got True",
        ),
        (
            {"amount": float("nan"), "unit": "seconds"},  # a bridge's JSON NaN
            "delay amount must be a non-negative number, got nan",
        ),
        ({"type": "timed", "cron": 900}, "delay cron must be a cron expression string, got 900"),
        (
            {"type": "timed", "cron": ["0 9 * * *"]},
            "delay cron must be a cron expression string, got ['0 9 * * *']",
        ),
        ({"type": "timed"}, "delay cron must be a cron expression string, got None"),
        (
            {"type": "dynamic", "dynamicKey": "payload.sendAt"},
            "delay type 'dynamic' is not supported yet; use amount and unit, or a cron",
        ),
        (
            {"type": "fixed", "amount": 1, "unit": "hours"},
            "delay type 'fixed' is not supported yet; use amount and unit, or a cron",
        ),
        (
            # no key of a set (unhashable): a TypeError, logged as a bug in norm's echo
            {"amount": 1, "unit": ["hours"]},
            "delay unit must be one of seconds, minutes, hours, days, weeks, months, got ['hours']",
        ),
    ],
)
def test_a_delay_norm_cannot_wait_out_is_refused_with_its_reason(
    outputs: dict[str, Any], reason: str
) -> None:
    with pytest.raises(UnsupportedDelay) as exc:
        delay_until(outputs, now=NOW)
    assert str(exc.value) == reason


def test_a_cron_with_a_number_too_long_to_read_is_refused_as_no_valid_cron() -> None:
    """Python reads no integer of more than 4,300 digits: cronsim's ValueError escaped, and
    the echo failed the notification as an answer norm could not record, with Python's
    advice to raise sys.set_int_max_str_digits(), logged as a bug of norm's."""
    cron = "0 9 1 " + "1" * 5000 + " *"
    with pytest.raises(UnsupportedDelay) as exc:
        delay_until({"type": "timed", "cron": cron}, now=NOW)
    assert str(exc.value) == (
        f"delay cron {repr(cron)[:99]}… is not a valid cron expression: a number in it "
        "is too long to read"
    )


def test_a_long_cron_is_shortened_in_the_reason() -> None:
    cron = "0 9 * * * " + "1," * 200
    with pytest.raises(UnsupportedDelay) as exc:
        delay_until({"type": "timed", "cron": cron}, now=NOW)
    assert str(exc.value).startswith(f"delay cron {repr(cron)[:99]}… is not a valid")
