"""A trigger's `to` (a subscriberId, a subscriber object, a topic, or a list of them) and
`actor`, and the checks of a subscriber's id and attributes the API and admin share."""

from __future__ import annotations

import functools
import re
import zoneinfo
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator

from config.errors import ApiError
from notify.senders import ascii_domain
from subscribers.models import Subscriber

MAX_RECIPIENTS = 1000
# Trigger field -> Subscriber model field for attributes given inline.
INLINE_FIELDS = {
    "email": "email",
    "phone": "phone",
    "firstName": "first_name",
    "lastName": "last_name",
    "avatar": "avatar",
    "locale": "locale",
    "timezone": "timezone",
    "data": "data",
}

# The Subscriber model's column lengths, checked here so a trigger that the worker
# could not store is refused at once, with nothing stored.
MAX_LENGTHS = {
    key: Subscriber._meta.get_field(field).max_length
    for key, field in INLINE_FIELDS.items()
    if key != "data"
}


class SubscriberEmailValidator(EmailValidator):
    """An address as Novu's subscriber API takes it (class-validator's IsEmail), which
    it refuses otherwise with a 422. Taken unchecked, "ann@", "Ann <ann@example.com>"
    or two addresses failed only the email steps that reached the subscriber. A local
    part beyond ASCII (josé@example.com) passes, as in Novu: norm sends it with SMTPUTF8.
    A control character in a quoted local part does not, unlike in Novu: Python's email
    package writes a vertical tab in the To header as a line break."""

    user_regex = re.compile(
        # Django's, its dot-atom with \w's letters and digits beyond ASCII too, and its
        # quoted local part without the control characters it takes
        r"(^[-!#$%&'*+/=?^_`{}|~\w]+(\.[-!#$%&'*+/=?^_`{}|~\w]+)*\Z"
        r'|^"([!#-\[\]-~]|\\[ -~])*"\Z)',
        re.IGNORECASE,
    )

    def validate_domain_part(self, domain_part: str) -> bool:
        # Django's pattern takes any character from U+00A1 to U+FFFF in a label, but the
        # send writes the domain as IDNA (ascii_domain), which refuses some (U+FFFD, a
        # private-use one) and a label longer than 63 characters once written so: each
        # email failed.
        if not super().validate_domain_part(domain_part):
            return False
        try:
            ascii_domain(domain_part)
        except UnicodeError:
            return False
        return True


# A subscriber's locale as Novu checks it (class-validator's IsLocale, which is
# validator.js's isLocale): a BCP 47 language tag, its subtags joined by `-` or `_`.
# Its quirks are kept: a variant's last three characters may hold a `-`, and a language
# of five to eight letters ("english") passes.
_LANGUAGE = r"([a-zA-Z]{2,3}(-[A-Za-z]{3}(-[A-Za-z]{3}){0,2})?|[a-zA-Z]{5,8})"
_VARIANT = r"([A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9-]{3})"
_EXTENSION = r"[0-9A-WYZa-wyz](-[A-Za-z0-9]{2,8})+"
_PRIVATE_USE = r"x(-[A-Za-z0-9]{1,8})+"
_GRANDFATHERED = (
    "en-GB-oed|i-ami|i-bnn|i-default|i-enochian|i-hak|i-klingon|i-lux|i-mingo|i-navajo|"
    "i-pwn|i-tao|i-tay|i-tsu|sgn-BE-FR|sgn-BE-NL|sgn-CH-DE|art-lojban|cel-gaulish|no-bok|"
    "no-nyn|zh-guoyu|zh-hakka|zh-min|zh-min-nan|zh-xiang"
)
_LOCALE = re.compile(
    rf"{_PRIVATE_USE}|{_GRANDFATHERED}"
    rf"|{_LANGUAGE}([-_][A-Za-z]{{4}})?([-_]([A-Za-z]{{2}}|[0-9]{{3}}))?"
    rf"([-_]{_VARIANT})*([-_]{_EXTENSION})*([-_]{_PRIVATE_USE})?"
)
# class-validator's messages, which Novu answers with.
LOCALE_MESSAGE = "locale must be locale"
EMAIL_MESSAGE = "email must be an email"
TIMEZONE_MESSAGE = "timezone must be a valid IANA time-zone"


def locale_valid(value: str) -> bool:
    return _LOCALE.fullmatch(value) is not None


@functools.cache
def _time_zones() -> dict[str, str]:
    # The host's database and the tzdata package's (a dependency): the same names on
    # every host, the old ones (US/Eastern, Asia/Calcutta) included, which Node's Intl
    # takes and Debian 13 moved to a package of their own, tzdata-legacy.
    return {name.lower(): name for name in zoneinfo.available_timezones()}


def timezone_name(value: str) -> str | None:
    """The IANA name of a time zone, spelt as the database spells it ("europe/paris" is
    "Europe/Paris", as JavaScript's Intl, which Novu's IsTimeZone asks, matches any
    case); None for no such zone."""
    return _time_zones().get(value.lower())


def email_valid(value: str) -> bool:
    try:
        SubscriberEmailValidator()(value)
    except ValidationError:
        return False
    return True


def checked_attributes(recipient: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A trigger's inline subscriber less an `email`, `locale` or `timezone` Novu would
    refuse (with the reasons): the subscriber is upserted and notified without it, its
    stored value kept. Novu refuses the whole recipient there (its worker's
    CreateOrUpdateSubscriberCommand fails, and that subscriber gets nothing); norm
    does not lose a notification over a locale, nor a stored address over a typo."""
    checked, refused = dict(recipient), []
    email = checked.get("email")
    if isinstance(email, str) and email and not email_valid(email):
        del checked["email"]
        refused.append(f"{EMAIL_MESSAGE} ({email[:40]!r} was not stored)")
    locale, zone = checked.get("locale"), checked.get("timezone")
    if isinstance(locale, str) and locale and not locale_valid(locale):
        del checked["locale"]
        refused.append(f"{LOCALE_MESSAGE} ({locale[:40]!r} was not stored)")
    if isinstance(zone, str) and zone:
        name = timezone_name(zone)
        if name is None:
            del checked["timezone"]
            refused.append(f"{TIMEZONE_MESSAGE} ({zone[:40]!r} was not stored)")
        else:
            checked["timezone"] = name
    return checked, refused


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_recipients", message, [{"field": "to", "message": message}])


# A subscriberId (or a topic key) is a segment of the URLs that reach it
# (/v2/subscribers/{id}, /v2/topics/{key}): no route takes a `/` (%2F too is decoded
# before routing), and `?` or `#` ends the path of a URL novu-py builds, as it does not
# escape them; nor `%`, which the server then decodes (ann%2Fb reads as ann/b). Nor is
# one `.` or `..`: a dot segment, which every client's URL parser resolves (@novu/api's
# fetch, httpx, requests), so /v2/subscribers/.. reaches /v2/.
_UNROUTABLE = "/?#%"
_DOT_SEGMENTS = (".", "..")


def routable(segment: str) -> bool:
    """Whether a subscriberId or topic key can stand in the URLs that reach it."""
    return segment not in _DOT_SEGMENTS and not any(c in segment for c in _UNROUTABLE)


def new_unroutable(*, client_id: int, subscriber_ids: list[str]) -> list[str]:
    """The subscriberIds no URL could reach, of subscribers not created yet. One made
    with such an id before norm refused them stays reachable by triggers and upserts."""
    odd = [sid for sid in subscriber_ids if not routable(sid)]
    if not odd:
        return []
    known = set(
        Subscriber.objects.filter(client_id=client_id, subscriber_id__in=odd).values_list(
            "subscriber_id", flat=True
        )
    )
    return [sid for sid in odd if sid not in known]


def unroutable_message(subscriber_id: str) -> str:
    return (
        f"Invalid subscriberId '{subscriber_id}': a subscriberId may not hold /, ?, # or %,"
        " nor be . or .., which no /v2/subscribers/{subscriberId} URL can carry"
    )


def refuse_new_unroutable(*, client_id: int, recipients: list[dict[str, Any]]) -> None:
    """ApiError 400 (invalid_recipients) for a trigger that would create a subscriber
    whose subscriberId no URL could reach (`new_unroutable`)."""
    ids = [r["subscriberId"] for r in recipients]
    if bad := new_unroutable(client_id=client_id, subscriber_ids=ids):
        raise _invalid(unroutable_message(bad[0]))


def parse_actor(actor: Any) -> dict[str, Any] | None:
    """A trigger's `actor`, read as a recipient is (a subscriberId, or a subscriber object
    whose attributes create or update it); None for none. ApiError 400 (invalid_actor)
    for another value, as Novu checks an actor object against its subscriber DTO."""
    if actor is None or actor == "":
        return None
    if not (_is_id(actor) or (isinstance(actor, dict) and _is_id(actor.get("subscriberId")))):
        message = "`actor` must be a subscriberId or a subscriber object with a subscriberId"
    else:
        try:
            return _subscriber(actor)
        except ApiError as exc:
            message = exc.message
    raise ApiError(400, "invalid_actor", message, [{"field": "actor", "message": message}])


def parse_recipients(to: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Normalise `to` into (subscribers, topics).

    Subscribers come one per subscriberId, with the inline fields of all its mentions
    (a later one's value wins); topics one per topicKey, as `{"topicKey", "exclude":
    [subscriberId, ...]}` with the excludes of all its mentions.
    """
    items = to if isinstance(to, list) else [to]
    if not items or to in ("", None):
        raise _invalid("`to` must name at least one subscriber or topic")
    if len(items) > MAX_RECIPIENTS:
        raise _invalid(
            f"`to` lists more than {MAX_RECIPIENTS} recipients; use a topic or a broadcast"
        )
    recipients: dict[str, dict[str, Any]] = {}
    # topicKey -> its excluded ids, each once, in order (a dict's keys): each looked for
    # in a list as it grew, an exclude of 60,000 ids (within the body limit) held the
    # request a minute.
    topics: dict[str, dict[str, None]] = {}
    for item in items:
        if isinstance(item, dict) and (item.get("type") == "Topic" or "topicKey" in item):
            topic = _topic(item)
            # A topic named twice excludes what either entry excludes, as Novu gathers
            # every entry's exclude by topicKey: the first's alone notified the second's.
            topics.setdefault(topic["topicKey"], {}).update(dict.fromkeys(topic["exclude"]))
            continue
        recipient = _subscriber(item)
        recipients.setdefault(recipient["subscriberId"], {}).update(recipient)
    named = [{"topicKey": key, "exclude": list(ids)} for key, ids in topics.items()]
    return list(recipients.values()), named


def _topic(item: dict[str, Any]) -> dict[str, Any]:
    key, exclude = item.get("topicKey"), item.get("exclude") or []
    # Trimmed, as the topic API stores a key: " news " named no topic.
    key = key.strip() if isinstance(key, str) else key
    if not isinstance(key, str) or not key:
        raise _invalid("a topic needs a non-empty topicKey")
    if not isinstance(exclude, list) or not all(_is_id(e) for e in exclude):
        raise _invalid("a topic's exclude must be a list of subscriberIds")
    # Read as subscriberIds are: " dan " and 7 exclude "dan" and "7".
    return {"topicKey": key, "exclude": [str(e).strip() for e in exclude]}


def _is_id(value: Any) -> bool:
    """A subscriberId as Novu's clients send it: a string, or a number (not a bool)."""
    return isinstance(value, str | int) and not isinstance(value, bool)


def _subscriber(item: Any) -> dict[str, Any]:
    if _is_id(item):
        recipient: dict[str, Any] = {"subscriberId": str(item).strip()}
    elif isinstance(item, dict) and _is_id(item.get("subscriberId")):
        recipient = {"subscriberId": str(item["subscriberId"]).strip()}
        for key in INLINE_FIELDS:
            if key in item and item[key] is not None:
                # Trimmed, as the subscriber API's fields trim them: " ann@example.com\n"
                # (a line of a file) was no email here, and left out.
                value = item[key]
                recipient[key] = value.strip() if isinstance(value, str) else value
        if "data" in recipient and not isinstance(recipient["data"], dict):
            raise _invalid("a subscriber's `data` must be an object")
        for key, limit in MAX_LENGTHS.items():
            value = recipient.get(key)
            if value is not None and (not isinstance(value, str) or len(value) > limit):
                raise _invalid(
                    f"a subscriber's `{key}` must be a string of at most {limit} characters"
                )
    else:
        raise _invalid("each recipient must be a subscriberId, a subscriber object or a topic")
    if not recipient["subscriberId"] or len(recipient["subscriberId"]) > 255:
        raise _invalid("subscriberId must be 1 to 255 characters")
    return recipient
