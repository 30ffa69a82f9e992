"""A client's sender policy: its default From, and the domains its bridge may send as.

Every client's email goes out through the operator's one SMTP server, which the
receiving servers trust for whatever domains it is set up for (SPF, DKIM): without a
policy, one tenant's bridge could send as another tenant's domain, or the operator's.

A domain matches itself only, not its subdomains: tenants are often given subdomains
of one shared domain (acme.mail.example, globex.mail.example), and a tenant allowed
that domain would then send as every other. Each subdomain is listed on its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import idna
from django.core.mail.message import sanitize_address

from notify.addresses import getaddresses

# One label of a host name (RFC 1123) once encoded as IDNA.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")


def ascii_domain(domain: str) -> str:
    """`domain` as DNS looks it up: a name beyond ASCII as IDNA 2008 (UTS #46,
    non-transitional) encodes it, as registries, browsers, nodemailer and mail servers
    do. Python's codec, which Django sends with, is IDNA 2003, which spells ß as ss (and
    ς as σ, and drops the joiners): straße.example became strasse.example, another
    domain. A name IDNA 2008 refuses (a symbol, which IDNA 2003 took) keeps that codec's
    encoding. A UnicodeError (a ValueError) for a name neither encodes."""
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True, transitional=False).decode("ascii")
    except idna.IDNAError:
        return domain.encode("idna").decode("ascii")


def domain_key(domain: str) -> str:
    """`domain` as it is compared: IDNA-encoded the way norm encodes it to send
    (zürich.example and xn--zrich-kva.example are one), lower-case, without the
    trailing dot of a fully qualified name. A ValueError for no host name."""
    name = domain.strip().removesuffix(".")
    try:
        ascii_name = ascii_domain(name).lower()
    except UnicodeError as exc:
        raise ValueError(f"{domain!r} is no domain name") from exc
    if not all(_LABEL.match(label) for label in ascii_name.split(".")):
        raise ValueError(f"{domain!r} is no domain name")
    return ascii_name


def _domain_keys(domains: Iterable[str]) -> set[str]:
    keys = set()
    for domain in domains:
        try:
            keys.add(domain_key(domain))
        except ValueError:
            continue  # refused on save; one stored otherwise allows nothing
    return keys


def sender_refused(address: str, domains: list[str]) -> str:
    """Why a step's from.email may not be sent as ("" when it may): with `domains` (the
    client's email_from_domains) set, it must be one plain address within them."""
    if not domains:
        return ""
    allowed = ", ".join(domains)
    # One plain address, no name, comment or list: only then is its domain the text
    # after its last "@" ("shop@globex.example, x@acme.example" would read acme.example).
    if "@" not in address or getaddresses([address]) != [("", address)]:
        return (
            f"the step's output has a from.email that is no single address ({address!r:.100}); "
            f"the client may send from {allowed} only"
        )
    domain = address.rpartition("@")[2]
    try:
        allowed_here = domain_key(domain) in _domain_keys(domains)
    except ValueError:
        allowed_here = False
    if allowed_here:
        return ""
    return (
        f"the step's output has a from.email outside the client's sender domains "
        f"({address:.100}); the client may send from {allowed} only"
    )


def sender_domains_problem(domains: Any) -> str:
    """Why `domains` cannot be a client's email_from_domains ("" when it can)."""
    if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
        return 'Use a list of domain names: ["acme.example", "mail.acme.example"].'
    for domain in domains:
        if "@" in domain:
            return f"{domain!r} is an address: list its domain alone."
        try:
            domain_key(domain)
        except ValueError as exc:
            return f"{exc} (a subdomain is listed on its own; no wildcards)."
    return ""


def email_from_problem(email_from: str, domains: list[str]) -> str:
    """Why `email_from` cannot be a client's default From ("" when it can): one address,
    with a name or not (`Acme <hello@acme.example>`), within `domains` when they are set."""
    if not email_from:
        return ""
    found = getaddresses([email_from])
    # A line break at its end counts too (a secret's file leaves one): Django refuses \r
    # and \n in a header, and Python's email package writes the others (a vertical tab,
    # U+2028) in one as a line break.
    broken = len(f"{email_from}.".splitlines()) > 1
    if broken or len(found) != 1 or "@" not in found[0][1]:
        return (
            f"{email_from!r} is no email address: write one, as `Acme <hello@acme.example>` "
            '(a name with a comma in quotes: `"Acme, Inc." <hello@acme.example>`).'
        )
    try:
        sanitize_address(email_from, "utf-8")  # the check Django makes as it sends
    except ValueError as exc:
        return f"{email_from!r} is no email address Django can send from: {exc}"
    address = found[0][1]
    if sender_refused(address, domains):
        return f"{address} is not within the client's sender domains ({', '.join(domains)})."
    return ""


def stored_policy_problem(email_from: str, domains: Any) -> str:
    """Why a client's sender policy, as the database holds it, cannot be applied ("" when
    it can). The admin and createclient refuse such a policy, but one written otherwise
    (an update in a shell, SQL) was applied as read: an email_from outside the domains
    or of no address went out as the From, a string of domains allowed its letters."""
    problem = sender_domains_problem(domains)
    if problem:
        return f"its email_from_domains ({domains!r:.100}) is refused: {problem}"
    problem = email_from_problem(email_from, domains)
    return f"its email_from is refused: {problem}" if problem else ""
