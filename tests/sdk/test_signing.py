from __future__ import annotations

import hmac
import json
from typing import Any

import pytest

from workflows.sdk import (
    Bridge,
    SignatureExpiredError,
    SignatureInvalidError,
    SignatureMismatchError,
    SignatureNotFoundError,
    SigningKeyNotFoundError,
    canonical_json,
    signature_header,
    verify_signature,
)

SECRET = "sk_test_demo"
NOW = 1_795_818_578_677


def test_matches_the_vector_captured_from_novu_framework() -> None:
    body = (
        '{"payload":{"userName":"Ada","body":"Thanks for signing up.","sendSms":false},'
        '"subscriber":{"subscriberId":"sub-123","email":"ada@example.com","firstName":"Ada",'
        '"phone":"+15555550100"},"controls":{},"state":[]}'
    )
    header = signature_header(SECRET, body, timestamp_ms=NOW)
    assert header == (
        "t=1795818578677,v1=a7bd5247f73e367379a9225e9204c08b786ce5d2dddd663e40df8c851caa974f"
    )
    assert canonical_json(json.loads(body)) == body


@pytest.mark.parametrize(
    ("value", "written"),
    [  # each `written` is what node's JSON.stringify(JSON.parse(written)) gives back
        ({"b": 1, "10": 2, "2": 3, "007": 4}, '{"2":3,"10":2,"b":1,"007":4}'),
        # 2**32 - 2 is JS's last array index; 2**32 - 1 an ordinary key, kept in place
        (
            {"b": 1, "4294967295": 2, "4294967294": 3, "7": 5},
            '{"7":5,"4294967294":3,"b":1,"4294967295":2}',
        ),
        ({"amount": 10.0, "by": {"q1": 1, "2024": 2}}, '{"amount":10,"by":{"2024":2,"q1":1}}'),
        ([1e-07, 1.5e-05, 0.1, 1e21, 1.5e22, -0.0], "[1e-7,0.000015,0.1,1e+21,1.5e+22,0]"),
        (
            [3.2099280116398797e19, 9.1e15, float("nan")],
            "[32099280116398797000,9100000000000000,null]",
        ),
        (
            {"t": 'é \u2028\n\x01"\\', "s": "\ud800"},
            '{"t":"é \u2028\\n\\u0001\\"\\\\","s":"\\ud800"}',
        ),
    ],
)
def test_canonical_json_writes_what_js_writes_back(value: Any, written: str) -> None:
    assert canonical_json(value) == written


def test_integers_beyond_2_53_are_written_as_js_writes_them_back_when_asked() -> None:
    # As PostgreSQL gives back 1e21 and 1.5e24 stored in jsonb: integers. `written` is
    # node's JSON.stringify(JSON.parse(...)) of the integers written whole.
    value = [10**21, 12345678901234567890, 2**53 + 1, -(2**53 + 1), 2**53, 10**400]
    value.append({"a": [15 * 10**23]})
    written = (
        "[1e+21,12345678901234567000,9007199254740992,-9007199254740992,9007199254740992,"
        'null,{"a":[1.5e+24]}]'
    )
    assert canonical_json(value, js_integers=True) == written
    assert canonical_json(value).startswith("[1000000000000000000000,12345678901234567890,")


def test_valid_signature_passes() -> None:
    body = canonical_json({"payload": {"name": "Ada"}, "state": []})
    verify_signature(SECRET, signature_header(SECRET, body, NOW), body.encode(), now_ms=NOW)


def test_header_puts_t_first() -> None:
    assert signature_header(SECRET, "{}", NOW).startswith(f"t={NOW},v1=")


def test_current_time_is_used_by_default() -> None:
    verify_signature(SECRET, signature_header(SECRET, "{}"), "{}")


def test_pair_order_does_not_matter() -> None:
    t_part, v1_part = signature_header(SECRET, "{}", NOW).split(",")
    verify_signature(SECRET, f"{v1_part},{t_part}", b"", now_ms=NOW)


def test_spaces_around_the_pairs_do_not_matter() -> None:
    """Novu's SDK trims each pair (`i.trim()`), so a proxy or hand-written client's
    `t=..., v1=...` verifies there, as here."""
    t_part, v1_part = signature_header(SECRET, "{}", NOW).split(",")
    verify_signature(SECRET, f" {t_part} , {v1_part} ", b"", now_ms=NOW)


@pytest.mark.parametrize("header", [None, ""])
def test_missing_signature(header: str | None) -> None:
    """An empty header is none, as for Novu's SDK (`if (!signatureHeader)`): an adapter
    that passes `request.headers.get(name, "")` gets the code Novu's client reads as a
    missing signature, not SignatureInvalidError."""
    with pytest.raises(SignatureNotFoundError) as exc:
        verify_signature(SECRET, header, b"{}", now_ms=NOW)
    assert (exc.value.status, exc.value.code) == (401, "SignatureNotFoundError")


@pytest.mark.parametrize("secret", [None, ""])
def test_missing_secret(secret: str | None) -> None:
    # Even a header signed with that empty key: anyone can compute an HMAC under "".
    header = signature_header(secret or "", "{}", NOW)
    with pytest.raises(SigningKeyNotFoundError):
        verify_signature(secret, header, b"{}", now_ms=NOW)


@pytest.mark.parametrize(
    "header", ["garbage", "t=abc,v1=00", "v1=00", f"t={NOW}", "t=²,v1=00", f"t={'1' * 5000},v1=00"]
)
def test_malformed_header(header: str) -> None:
    with pytest.raises(SignatureInvalidError):
        verify_signature(SECRET, header, b"{}", now_ms=NOW)


def test_forged_signature() -> None:
    header = signature_header("sk_wrong", "{}", NOW)
    with pytest.raises(SignatureMismatchError) as exc:
        verify_signature(SECRET, header, b"{}", now_ms=NOW)
    assert exc.value.status == 401


@pytest.mark.parametrize("length", [1, 32, 63])
def test_a_signature_cut_short_is_a_mismatch(length: int) -> None:
    """A prefix of the right HMAC is no signature: compared as far as the header's goes,
    a one-digit `v1` would be forged one time in sixteen."""
    v1 = signature_header(SECRET, "{}", NOW).partition(",v1=")[2]
    with pytest.raises(SignatureMismatchError):
        verify_signature(SECRET, f"t={NOW},v1={v1[:length]}", b"{}", now_ms=NOW)
    with pytest.raises(SignatureMismatchError):
        verify_signature(SECRET, f"t={NOW},v1={v1}0", b"{}", now_ms=NOW)


def test_the_signature_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compared with `==`, which stops at the first digit that differs, the time a refusal
    takes tells a forger how many leading digits of a guessed `v1` are right, and the
    HMAC can be found a digit at a time. That time cannot be measured reliably in a test:
    this one proves each verdict is hmac.compare_digest's (the real one, watched)."""
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def watched(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", watched)
    verify_signature(SECRET, signature_header(SECRET, "{}", NOW), b"{}", now_ms=NOW)
    assert len(compared) == 1
    forged = signature_header("sk_wrong", "{}", NOW)
    with pytest.raises(SignatureMismatchError):
        verify_signature(SECRET, forged, b"{}", now_ms=NOW)
    assert len(compared) == 2 and compared[1][1] == forged.partition(",v1=")[2].encode()


def test_a_signature_with_non_ascii_characters_is_a_mismatch() -> None:
    with pytest.raises(SignatureMismatchError):
        verify_signature(SECRET, f"t={NOW},v1=éé", b"{}", now_ms=NOW)


def test_a_body_with_an_escaped_lone_surrogate_is_checked_not_crashed_on() -> None:
    text = '{"a":"\\ud800"}'  # as JS's JSON.stringify writes a lone surrogate
    verify_signature(SECRET, signature_header(SECRET, text, NOW), text.encode(), now_ms=NOW)
    with pytest.raises(SignatureMismatchError):
        verify_signature(SECRET, signature_header("sk_other", text, NOW), text.encode(), now_ms=NOW)


def test_a_body_given_as_text_with_a_lone_surrogate_is_a_mismatch_not_a_crash() -> None:
    """`Bridge.handle` takes the body as text too: one a framework decoded with
    surrogateescape holds a lone surrogate for each byte that is no UTF-8, and encoding
    it to check the signature raised UnicodeEncodeError, a 500 to an unsigned request."""
    text = '{"a":"\udcff"}'  # the byte 0xff, decoded with surrogateescape
    with pytest.raises(SignatureMismatchError):
        verify_signature(SECRET, signature_header(SECRET, "{}", NOW), text, now_ms=NOW)
    bridge = Bridge(workflows=[], secret_key=SECRET)
    header = {"novu-signature": signature_header(SECRET, "{}")}
    query = {"action": "execute", "workflowId": "w"}
    status, answer, _ = bridge.handle(method="POST", query=query, body=text, headers=header)
    assert (status, answer["code"]) == (401, "SignatureMismatchError")


def test_tampered_body() -> None:
    header = signature_header(SECRET, '{"a":1}', NOW)
    with pytest.raises(SignatureMismatchError):
        verify_signature(SECRET, header, b'{"a":2}', now_ms=NOW)


@pytest.mark.parametrize("skew_ms", [300_001, -300_001])
def test_expired_in_both_directions(skew_ms: int) -> None:
    header = signature_header(SECRET, "{}", NOW + skew_ms)
    with pytest.raises(SignatureExpiredError):
        verify_signature(SECRET, header, b"{}", now_ms=NOW)


@pytest.mark.parametrize("skew_ms", [300_000, -300_000, 299_000, -299_000])
def test_within_five_minutes_passes(skew_ms: int) -> None:
    verify_signature(SECRET, signature_header(SECRET, "{}", NOW + skew_ms), b"{}", now_ms=NOW)


def test_timestamp_in_seconds_is_expired() -> None:
    header = signature_header(SECRET, "{}", NOW // 1000)
    with pytest.raises(SignatureExpiredError):
        verify_signature(SECRET, header, b"{}", now_ms=NOW)


def test_non_ascii_nested_body_is_signed_canonically() -> None:
    body = {"payload": {"name": "Zoë 😀", "lines": ["\u2028", {"deep": ["é", 1]}]}, "state": []}
    signed = canonical_json(body)
    assert "Zoë 😀" in signed and "\\u" not in signed
    header = signature_header(SECRET, signed, NOW)
    verify_signature(SECRET, header, signed.encode("utf-8"), now_ms=NOW)
    # A sender that escapes non-ASCII signed something JS would never re-serialize to.
    escaped = json.dumps(body, separators=(",", ":"))
    with pytest.raises(SignatureMismatchError):
        verify_signature(SECRET, signature_header(SECRET, escaped, NOW), signed, now_ms=NOW)


def test_pretty_printed_body_verifies_against_its_compact_form() -> None:
    body = {"payload": {"name": "Zoë"}, "state": []}
    header = signature_header(SECRET, canonical_json(body), NOW)
    verify_signature(SECRET, header, json.dumps(body, indent=2, ensure_ascii=False), now_ms=NOW)


def test_raw_body_signature_is_also_accepted() -> None:
    # A sender that signed its own (non-canonical) bytes still matches on the raw body.
    raw = '{"payload": {"ratio": 1.0, "name": "\\u00e9"}}'
    verify_signature(SECRET, signature_header(SECRET, raw, NOW), raw.encode(), now_ms=NOW)


def test_get_requests_sign_an_empty_object() -> None:
    verify_signature(SECRET, signature_header(SECRET, "{}", NOW), None, now_ms=NOW)
    with pytest.raises(SignatureMismatchError):
        verify_signature(SECRET, signature_header(SECRET, "", NOW), None, now_ms=NOW)
