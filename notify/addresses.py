"""Email addresses read alike on every Python norm runs on.

Python's fix for CVE-2023-27043 (3.13, and 3.12.6 and 3.11.10 on) reads a malformed
value as ("", ""), not as some address within it; it also reads so every address whose
domain is a literal (norm@[192.0.2.1]), which Django sends as it is. On those Pythons
such a DEFAULT_FROM_EMAIL failed norm.E012, so every command, and a client's email_from
or a step's replyTo was refused, all of which an older Python took. Here each literal
is read as a domain name no address has, and given back.
"""

from __future__ import annotations

import email.utils
import re
import secrets
from collections.abc import Callable, Iterable

# A domain literal (RFC 5322, 3.4.1): "@" then brackets around text without brackets or
# backslashes, the whole of the domain (a@[192.0.2.1].evil.example is none).
_LITERAL = re.compile(r"@\[[^\[\]\\]+\](?=$|[\s>,;(])")
# What stands in for the nth literal: a name of the reserved .invalid, with a part drawn
# once a process, so no address given is read as one.
_TOKEN = secrets.token_hex(8)
_STAND_INS = re.compile(rf"literal(\d+)-{_TOKEN}\.invalid")


def getaddresses(values: Iterable[str]) -> list[tuple[str, str]]:
    """email.utils.getaddresses, but an address at a domain literal read on every Python."""
    return _with_literals(email.utils.getaddresses, list(values))


def parseaddr(value: str) -> tuple[str, str]:
    """email.utils.parseaddr, but an address at a domain literal read on every Python."""
    return _with_literals(lambda values: [email.utils.parseaddr(values[0])], [value])[0]


def _with_literals(
    parse: Callable[[list[str]], list[tuple[str, str]]], values: list[str]
) -> list[tuple[str, str]]:
    literals: list[str] = []

    def stand_in(match: re.Match[str]) -> str:
        literals.append(match[0].removeprefix("@"))
        return f"@literal{len(literals) - 1}-{_TOKEN}.invalid"

    found = parse([_LITERAL.sub(stand_in, value) for value in values])
    if not literals:
        return found

    def given_back(match: re.Match[str]) -> str:
        return literals[int(match[1])]

    return [
        (_STAND_INS.sub(given_back, name), _STAND_INS.sub(given_back, address))
        for name, address in found
    ]
