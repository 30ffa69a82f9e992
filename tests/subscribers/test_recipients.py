"""`to` as the trigger API and the workflow worker read it (subscribers/recipients.py)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from config.errors import ApiError
from subscribers.recipients import parse_recipients


def test_a_subscriber_named_twice_keeps_the_inline_fields_of_every_mention() -> None:
    recipients, _ = parse_recipients(
        [
            "bob",
            {"subscriberId": "bob", "email": "bob@example.com", "lastName": "Smith"},
            {"subscriberId": " bob ", "firstName": "Bob", "email": "robert@example.com"},
        ]
    )
    # The last mention's email wins; the earlier one's lastName, which it lacks, is kept.
    assert recipients == [
        {
            "subscriberId": "bob",
            "email": "robert@example.com",
            "firstName": "Bob",
            "lastName": "Smith",
        }
    ]


def test_a_topics_long_exclude_is_read_in_time_proportional_to_its_length() -> None:
    """Each id of an exclude was looked for in the list of those kept so far: 60,000 ids,
    which the body limit lets through, held the trigger request about a minute, 100,000
    three. Run in a thread only to end the test if that comes back."""
    ids = [f"s{i}" for i in range(100_000)]
    parsed: list[Any] = []
    item = {"type": "Topic", "topicKey": "news", "exclude": [*ids, " s1 ", "s7"]}
    reader = threading.Thread(target=lambda: parsed.append(parse_recipients(item)), daemon=True)
    reader.start()
    reader.join(timeout=60)

    assert parsed, "the exclude was still being read after a minute"
    assert parsed[0] == ([], [{"topicKey": "news", "exclude": ids}])


def test_an_inline_field_sent_as_null_is_left_out() -> None:
    """A null is no value: the stored one is kept, not replaced with None."""
    recipients, _ = parse_recipients([{"subscriberId": "bob", "email": None, "data": None}])
    assert recipients == [{"subscriberId": "bob"}]


def test_exclude_entries_are_read_as_subscriber_ids_are() -> None:
    _, topics = parse_recipients({"type": "Topic", "topicKey": "news", "exclude": [" dan ", 7]})
    assert topics == [{"topicKey": "news", "exclude": ["dan", "7"]}]


def test_a_topic_named_twice_excludes_what_either_mention_excludes() -> None:
    _, topics = parse_recipients(
        [
            {"type": "Topic", "topicKey": "news", "exclude": ["ann"]},
            {"type": "Topic", "topicKey": "news"},
            {"type": "Topic", "topicKey": "news", "exclude": ["bob", " ann "]},
        ]
    )
    assert topics == [{"topicKey": "news", "exclude": ["ann", "bob"]}]


@pytest.mark.parametrize(
    "to",
    [
        True,
        {"subscriberId": True},
        {"type": "Topic", "topicKey": "news", "exclude": [True]},
        {"type": "Topic", "topicKey": "news", "exclude": [{"subscriberId": "a"}]},
    ],
)
def test_a_bool_or_an_object_is_no_subscriber_id(to: Any) -> None:
    with pytest.raises(ApiError) as refused:
        parse_recipients(to)
    assert refused.value.status == 400


def test_a_subscriber_id_is_trimmed_and_a_number_read_as_a_string() -> None:
    recipients, _ = parse_recipients([" ann ", 7])
    assert recipients == [{"subscriberId": "ann"}, {"subscriberId": "7"}]


@pytest.mark.parametrize(
    ("to", "accepted"),
    [
        ([f"u{i}" for i in range(1000)], True),
        ([f"u{i}" for i in range(1001)], False),
        ("a" * 255, True),
        ("a" * 256, False),  # longer than the column that stores it
    ],
)
def test_at_most_1000_recipients_of_at_most_255_characters(to: Any, accepted: bool) -> None:
    if accepted:
        parse_recipients(to)
        return
    with pytest.raises(ApiError) as refused:
        parse_recipients(to)
    assert refused.value.status == 400
