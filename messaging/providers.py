"""Delivery providers: one small class per provider behind a common `send()`.

A provider raises SendError saying whether another try can help, so the message
worker retries only what can succeed.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import html
import re
import smtplib
import socket
import threading
import time
from collections.abc import Callable
from email import policy
from email.generator import BytesGenerator
from email.header import Header
from email.utils import quote
from io import BytesIO
from typing import Any, ClassVar

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.backends.smtp import EmailBackend as SmtpBackend
from django.core.mail.message import sanitize_address, utf8_charset_qp
from django.core.mail.utils import DNS_NAME
from django.utils.html import MAX_STRIP_TAGS_DEPTH, MLStripper, long_open_tag_without_closing_re
from django.utils.module_loading import import_string

from config import deadlines
from config.db import storable
from messaging.models import Message
from notify.addresses import getaddresses, parseaddr
from notify.models import Client
from notify.senders import ascii_domain, sender_refused, stored_policy_problem
from subscribers.models import Subscriber

_BODY_TAG = re.compile(r"<body\b", re.IGNORECASE)
# Elements whose content no reader sees as text; each found up to its own closing tag.
_NOT_TEXT = re.compile(r"<(head|style|script)\b", re.IGNORECASE)
_CLOSING = {
    name: re.compile(rf"</{name}\s*>", re.IGNORECASE) for name in ("head", "style", "script")
}
# Where a reader of the HTML sees a new line (at an opening tag only: "</li> <li>" is
# one), or a blank one, or a space between table cells. ([^<>]* and not [^>]*: a
# search from each unclosed "<br" stops at the next tag.)
_LINE = re.compile(r"<(?:br|hr|div|li|tr)\b[^<>]*>", re.IGNORECASE)
_PARAGRAPH = re.compile(r"</?(?:p|h[1-6]|ul|ol|table|blockquote|pre)\b[^<>]*>", re.IGNORECASE)
_CELL = re.compile(r"</t[dh]\s*>", re.IGNORECASE)
_HTML_SPACE = re.compile(r"[ \t\r\n\f]+")  # not &nbsp;, which HTML keeps
# A link's opening tag, its address (quoted or not) and its closing tag: the address
# looked for within the tag, as a pattern spanning it tried again from each "href".
_LINK = re.compile(r"<a\s[^<>]*>", re.IGNORECASE)
_HREF = re.compile(r"""(?<![\w-])href\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""", re.IGNORECASE)
_LINK_END = re.compile(r"</a\s*>", re.IGNORECASE)
_TAG = re.compile(r"<[^<>]*>")
# The addresses a reader of the text can follow (not "#top", nor a relative one).
_LINK_SCHEME = re.compile(r"(?:https?://|mailto:)", re.IGNORECASE)
_BLANK_LINES = re.compile(r"\n{3,}")
# What the text part is made from: the body's first characters. Python's HTML parser
# reads dense markup ("<>" over and over) at under a megabyte a second, and some (an
# unclosed "<!--" after a ">") in time that grows with the square of its length before
# CPython 3.11.13 (issue 135462): a bridge may answer 10 MB, and the text part of one
# such email held a message worker, every client's, for seconds to hours. A reader sees
# no more: Gmail shows the first 102 KB of an email's HTML, the rest behind a link.
TEXT_SOURCE_CHARS = 100_000
# The longest subject, from name or reply-to address list an email is sent with. Python's
# email package encodes and folds a header at about a megabyte a second (a name beyond
# ASCII at half that): one of megabytes (a body given as the subject by mistake) held a
# message worker, every client's, for seconds each time, for a header no relay keeps
# whole (Postfix keeps 100 KB of an email's headers).
HEADER_CHARS = 10_000
# No address holds one, and Python's email package writes some of them (a vertical tab,
# a file separator) in a header as a line break. A trigger's inline subscriber stored
# its email as sent before norm checked it.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# A domain as DNS writes it: a dot-atom (RFC 5322) for a Message-ID's right-hand side.
_DOMAIN = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")


class SendError(Exception):
    """A send the provider failed. `transient`: whether another attempt can succeed (a
    timeout, a 4xx SMTP reply), which the message worker retries with backoff; otherwise
    the message fails for good."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def wrong_output(
    content: dict[str, Any],
    *,
    required: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
    within: str = "",
) -> str:
    """Why a step's output cannot be sent: a field that must be a string is not (a bridge
    that is not norm's SDK may send null, a number or an object); "" when all are.
    Sending str() of one would deliver "None" or a Python repr to the subscriber."""
    for key in (*required, *optional):
        value = content.get(key)
        if value is None and key in optional:
            continue
        if not isinstance(value, str):
            return f"the step's output has no {within}{key} string ({value!r:.100})"
    return ""


def one_line(text: str) -> str:
    """A header's text on one line, each line break read as a space, as nodemailer (so
    Novu) sends it. A header cannot carry one (it would start a header of its own), and
    Django refuses the whole email for it: a template's trailing newline lost the email."""
    return " ".join(line.strip(" \t") for line in text.splitlines() if line.strip(" \t"))


# SMTP carries lines of 998 characters at most (RFC 5321, 4.5.3.1.6). A header is folded
# between words only: one with a longer word (a link in the subject, in a from name) went
# out on one line, which a server refuses (500, the email lost) or cuts, the rest read as
# the body. Written as encoded words (RFC 2047), cut anywhere, it fits, and a mail client
# reads it whole. Shorter words are left as written: a header of encoded words alone
# scores as spam.
_LONGEST_WORD = 900


def on_lines(text: str, header: str, *, quoted: bool = False) -> str:
    """`header`'s `text`, as encoded words if a word of it is too long for a line: on one
    line, as Django takes a header, each short enough to be folded onto a line of its own
    (the first after the header's name). Not to be quoted. `quoted`: its words measured
    as a name's are written, quoted, each quote and backslash doubled ('"' * 600 is a
    word of 1,200 there)."""
    if all(len(word) <= _LONGEST_WORD for word in (quote(text) if quoted else text).split()):
        return text
    return " ".join(Header(text, "utf-8", header_name=header).encode().split())


def _names_on_lines(value: str, header: str) -> str:
    """`value` (addresses, with names or not) with each name on_lines writes anew as its
    encoded words, unquoted; as written if none is."""
    found = getaddresses([value])
    if all(on_lines(name, header, quoted=True) == name for name, _ in found):
        return value
    return ", ".join(_named(name, address, header) for name, address in found)


def _named(name: str, address: str, header: str) -> str:
    if not name:
        return address
    encoded = on_lines(name, header, quoted=True)
    if encoded == name and not name.isascii():
        # As Django writes it: raw beside another's encoded words, the generator wrote
        # the whole header as encoded words, its addresses too, which no client reads.
        encoded = " ".join(Header(name, "utf-8", header_name=header).encode().split())
    return f"{encoded} <{address}>" if encoded != name else f'"{quote(name)}" <{address}>'


class _Email(EmailMultiAlternatives):
    """Django's email, its subject and names fitting SMTP's lines (on_lines) in the
    message it writes. Not in its fields: a backend that sends those as an API's (an
    HTTP provider's) would show the encoded words as the subject's text."""

    def message(self, *args: Any, **kwargs: Any) -> Any:
        message = super().message(*args, **kwargs)
        # Folded here (_folded): replace_header, unlike message[...] =, keeps a value as
        # written, and the SMTPUTF8 send writes it so.
        subject = on_lines(self.subject, "Subject")
        if subject != self.subject:
            message.replace_header("Subject", _folded("Subject", subject))
        for header, value in (("From", self.from_email), ("Reply-To", ", ".join(self.reply_to))):
            if value and (named := _names_on_lines(value, header)) != value:
                message.replace_header(header, _folded(header, named))
        return message


def text_of(body: str) -> str:
    """The plain-text alternative of an HTML body: the text a reader sees. strip_tags
    alone kept a stylesheet or script as text, entities (&amp;, &nbsp;) as written, a
    template's indentation, and ran paragraphs together ("Hi Ann,</p><p>Your order"
    read "Hi Ann,Your order"). Made from the body's first TEXT_SOURCE_CHARS characters."""
    markup = _as_laid_out(_with_link_addresses(_without_hidden(body[:TEXT_SOURCE_CHARS])))
    if _unclosed_tags(markup):  # "<" after "<" with no ">": text, not markup to strip
        return html.unescape(body)  # whole, as unescaping costs a pass over it
    lines = (line.strip(" ") for line in html.unescape(_without_tags(markup)).split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip("\n")


def _unclosed_tags(markup: str) -> bool:
    """Whether `markup` has an opening tag that runs on, unclosed, over many more: Python's
    HTML parser takes time in the square of its length to read it (strip_tags' own check,
    for which it raised SuspiciousOperation)."""
    return any(
        tag[0].count("<") >= MAX_STRIP_TAGS_DEPTH
        for tag in long_open_tag_without_closing_re.finditer(markup)
    )


def _without_tags(markup: str) -> str:
    """`markup` without its tags and comments, read once. strip_tags reads its output again
    until a reading takes nothing more out, up to 50 times ("<<b>b>" is "<b>" after one),
    for HTML that is to be shown as HTML, where a text part is shown as it is: "<<<a>a>a>"
    nested 49 deep, then "<>" over and over, was read 50 times (8 s for 100 KB)."""
    if "<" not in markup or ">" not in markup:  # no tag: the parser would keep it all
        return markup
    parser = MLStripper()  # strip_tags' own: the data, its entities as written
    parser.feed(markup)
    parser.close()
    text = parser.get_data()
    # As strip_tags: a reading that took out no tag nor comment leaves the markup as it
    # was (the parser wrote "&copy2024" as "&copy2024;", which unescapes as "©2024;").
    return text if text.count("<") != markup.count("<") else markup


def _as_laid_out(body: str) -> str:
    """`body` with its white space as HTML reads it (any run of it one space) and a
    line break where a tag makes one, for _without_tags to leave them."""
    body = _HTML_SPACE.sub(" ", body)
    body = _PARAGRAPH.sub("\n\n", _LINE.sub("\n", body))
    return _CELL.sub(" ", body)


def _without_hidden(body: str) -> str:
    """`body` without its head, styles and scripts. In one pass: a pattern spanning an
    element (`<style.*?</style>`) would scan to the end from every unclosed opening tag,
    minutes of CPU for an email of a megabyte of them (from a payload, say)."""
    kept, at = [], 0
    while opening := _NOT_TEXT.search(body, at):
        closing = _CLOSING[opening[1].lower()].search(body, opening.end())
        if closing is None:
            break  # unclosed: the rest is kept as it is
        kept.append(body[at : opening.start()])
        at = closing.end()
    kept.append(body[at:])
    return "".join(kept)


def _with_link_addresses(body: str) -> str:
    """`body` with each link's address after its text ("Confirm (https://...)"): the
    text alternative kept the text alone, and an email whose call to action is a link
    ("Confirm your address") left a text-only reader nothing to do. Not when the text
    is the address already. In one pass, as _without_hidden."""
    kept, at = [], 0
    while link := _LINK.search(body, at):
        closing = _LINK_END.search(body, link.end())
        if closing is None:
            break  # unclosed: the rest is kept as it is
        kept.append(body[at : closing.end()])
        at = closing.end()
        href = _HREF.search(link[0])
        if href is None:
            continue
        address = html.unescape(next(g for g in href.groups() if g is not None)).strip()
        text = _HTML_SPACE.sub(" ", html.unescape(_TAG.sub("", body[link.end() : closing.start()])))
        scheme = _LINK_SCHEME.match(address)
        if scheme and text.strip() not in (address, address[scheme.end() :]):
            # A link of no text (an image's) is its address alone.
            kept.append(f" ({html.escape(address)})" if text.strip() else html.escape(address))
    kept.append(body[at:])
    return "".join(kept)


def with_preheader(body: str, preheader: str | None) -> str:
    """The HTML body with its preheader, the line a mail client shows beside the subject
    in a list, first in the body and hidden when the email is opened."""
    if not preheader:
        return body
    hidden = (
        '<div style="display:none;max-height:0;overflow:hidden;mso-hide:all">'
        f"{html.escape(one_line(preheader))}</div>"
    )
    opening = _BODY_TAG.search(body)
    at = body.find(">", opening.end()) + 1 if opening else 0  # after the tag; 0 if unclosed
    return body[:at] + hidden + body[at:]


def smtp_reply(reply: bytes | str) -> str:
    """An SMTP server's reply text as it wrote it, its lines run together: smtplib keeps
    it as bytes, which the message's error showed as Python writes them (b'5.1.1 ...').
    Storable: the server's NUL failed the store of the message's error, and its send."""
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    return storable(" ".join(line.strip() for line in text.splitlines() if line.strip()))


class Provider:
    """One provider of one channel, picked by NORM_PROVIDERS (`provider_for`): the message
    worker asks it whether the subscriber can be reached, then has it send."""

    name: ClassVar[str]
    channel: ClassVar[str]
    # Its delivery is the stored message (in-app): send() only checks the message and
    # calls nothing, so the message worker stores one that passes as sent at once.
    stores_only: ClassVar[bool] = False

    def recipient(self, message: Message) -> str:
        """The address the message goes to, stored on it ("" for a channel without one)."""
        return ""

    def unreachable(self, subscriber: Subscriber) -> str:
        """Why `subscriber` has no address on this channel; "" when they have one."""
        return ""

    def send(self, message: Message) -> str:
        """Deliver the message; return the provider's message id ("" if none)."""
        raise NotImplementedError


def _email_output_wrong(content: dict[str, Any]) -> str:
    """Why an email step's output cannot be sent ("" when it can): see `wrong_output`."""
    wrong = wrong_output(content, required=("subject", "body"), optional=("replyTo", "preheader"))
    if wrong:
        return wrong
    sender = content.get("from") or {}
    if not isinstance(sender, dict):
        return f"the step's output has a from that is no object (from: {sender!r:.100})"
    wrong = wrong_output(sender, optional=("email", "name"), within="from.")
    if wrong:
        return wrong
    for field, text in (
        ("subject", content["subject"]),
        ("from.name", sender.get("name")),
        ("from.email", sender.get("email")),
        ("replyTo", content.get("replyTo")),
    ):
        if text and (length := len(text)) > HEADER_CHARS:
            return f"the step's output has a {field} of {length} characters, over {HEADER_CHARS}"
    for field, address in (
        ("replyTo", content.get("replyTo")),
        ("from.email", sender.get("email")),
    ):
        # One address has no line break: unlike a name's, one is no space to read it as
        # but two addresses, or a header of its own (Bcc:) after it.
        if len(_address(address).splitlines()) > 1:
            return f"the step's output has a {field} with a line break ({address!r:.100})"
    reply_to = _address(content.get("replyTo"))
    if reply_to and not _address_list_valid(reply_to):
        # Django checks From and To as it sends, not Reply-To, which went out as written:
        # "ann@" reached the subscriber, whose reply then bounced.
        return f"the step's output has a replyTo that is no email address ({reply_to!r:.100})"
    return "" if one_line(content["subject"]) else "the step's output has an empty subject"


def _message_id(message: Message) -> str:
    """The Message-ID of `message`'s email, the same on each of its attempts.

    Django's (make_msgid: the time, a random number) was new on each: a send retried (a
    4xx, a reply that timed out after the server took the email, a worker killed before
    its commit and the step re-driven by the reconciler, an admin's retry) reached the
    recipient as a new email, which their mail system could not tell from a repeat.
    The message's id is unique in this install only (another install, or a staging copy
    of this database, numbers its messages alike); its notification's is a uuid4 drawn
    once and stored: together, unique anywhere, and the same on every attempt. The
    domain is DEFAULT_FROM_EMAIL's, the install's own: Django's (the host's name)
    differs between workers, and a retry runs on any."""
    _, at, domain = parseaddr(settings.DEFAULT_FROM_EMAIL)[1].rpartition("@")
    with contextlib.suppress(UnicodeError):  # an IDN, written as DNS reads it
        domain = ascii_domain(domain)
    if not (at and _DOMAIN.fullmatch(domain)):  # none, a literal ([192.0.2.1]): Django's
        domain = str(DNS_NAME)
    return f"<{message.pk}.{message.step.notification_id}@{domain}>"


def _address_list_valid(value: str) -> bool:
    """Whether each address of `value` ("a@x.example, Support <s@x.example>") passes the
    check Django makes of From and To as it sends them."""
    try:
        for address in getaddresses([value]):
            sanitize_address(address, "utf-8")
    except ValueError:
        return False
    return True


def _with_ascii_domains(value: str) -> str:
    """`value` (an address or a list, with names or not) with each domain beyond ASCII
    encoded as DNS looks it up (ascii_domain), for Django to send as it is: it encodes
    one itself as IDNA 2003, which sent ann@straße.example to ann@strasse.example. An
    address beyond ASCII before its "@" too is left as written, for SMTPUTF8 to carry
    whole (_beyond_ascii)."""
    found = getaddresses([value])
    encoded = []
    for name, address in found:
        local, at, domain = address.rpartition("@")
        if at and local.isascii() and not domain.isascii():
            with contextlib.suppress(UnicodeError):  # no domain name: Django refuses it
                address = f"{local}@{ascii_domain(domain)}"
        encoded.append((name, address))
    if encoded == found:
        return value
    return ", ".join(
        f'"{quote(name)}" <{address}>' if name else address for name, address in encoded
    )


def _address(value: str | None) -> str:
    """An address of the step's output without the white space around it: a template's
    trailing newline failed the email for good (Django refuses it in a header), where the
    subject's and the from name's are sent as a space."""
    return (value or "").strip()


def _addresses(email: EmailMultiAlternatives) -> list[str | tuple[str, str]]:
    """The email's addresses as Django checks them as it sends: the From and each To
    whole (one address each), the Reply-To's one by one, as (name, address), for the
    step's replyTo may list several ("support@x.example, Sales <sales@x.example>")."""
    return [email.from_email, *email.recipients(), *getaddresses(email.reply_to)]


def _beyond_ascii(email: EmailMultiAlternatives) -> list[str]:
    """The email's addresses whose local part is beyond ASCII (josé@example.com): only
    SMTPUTF8 (RFC 6531) carries one. Django writes it as an RFC 2047 encoded word
    (=?utf-8?b?am9zw6k=?=@example.com), which no server decodes: another mailbox."""
    found = (a if isinstance(a, tuple) else parseaddr(a) for a in _addresses(email))
    return [address for _, address in found if not address.rpartition("@")[0].isascii()]


_SMTPUTF8 = policy.SMTPUTF8.clone(linesep="\r\n", refold_source="none")


def _folded(header: str, value: str) -> str:
    """`header`'s `value` folded at its spaces, onto lines of 78 characters where a word
    fits one (RFC 5322, 2.2.3): unfolded, it is as written. Parsed as addresses and
    folded by Python under SMTPUTF8, a name's encoded words (on_lines) were decoded and
    their text cut anywhere, unquoted ("Orders https:" read as a group's name)."""
    first, *words = value.split(" ")
    lines, width = [first], 78 - len(f"{header}: ")
    for word in words:
        if word and lines[-1].strip() and len(lines[-1]) + 1 + len(word) > width:
            lines.append(word)
            width = 78 - 1  # after the space that opens the line
        else:
            lines[-1] += f" {word}"
    return "\n ".join(lines)


def _send_smtputf8(backend: SmtpBackend, email: EmailMultiAlternatives, needing: list[str]) -> None:
    """Send `email` with SMTPUTF8, its addresses `needing` it (_beyond_ascii) as written
    in the envelope and the headers (RFC 6532); a final SendError from a server that does
    not offer it."""
    for address in _addresses(email):
        sanitize_address(address, "utf-8")  # Django's checks: a ValueError, as for the others
    message = email.message()
    # Django's message has the addresses beyond ASCII as encoded words; replace_header,
    # unlike message[...] =, keeps them as written, folded between their words
    # (_folded). The other headers Django has folded already: folded again
    # (refold_source), a word too long for a line (a link in the subject) was cut into
    # encoded words glued to its text, which no mail client may decode (RFC 2047, 5), or
    # a space was taken into it. An address header without one is folded here, between
    # words, as Django's generator does.
    for header, addresses in (
        ("From", [email.from_email]),
        ("To", email.to),
        ("Reply-To", email.reply_to),
    ):
        if not addresses:
            continue
        if {address for _, address in getaddresses(addresses)} & set(needing):
            value = _folded(header, _names_on_lines(", ".join(addresses), header))
        else:
            value = Header(message[header], header_name=header).encode()
        message.replace_header(header, value)
    smtp = backend.connection
    smtp.ehlo_or_helo_if_needed()
    if not smtp.has_extn("smtputf8"):
        raise SendError(
            f"the SMTP server does not offer SMTPUTF8, which {', '.join(needing)} needs",
            transient=False,
        )
    data = BytesIO()
    generator = BytesGenerator(data, policy=_SMTPUTF8)
    generator.flatten(message)
    sender = parseaddr(email.from_email)[1]
    smtp.sendmail(sender, email.recipients(), data.getvalue(), mail_options=["SMTPUTF8"])


# smtplib's timeout (EMAIL_TIMEOUT) bounds each socket operation, not a send: a server,
# or a middlebox, that answers a byte at a time (its greeting, EHLO, STARTTLS or a reply
# to MAIL, RCPT or DATA) held the message worker for good. Each send has a deadline
# (EMAIL_SEND_DEADLINE, config/deadlines.py) that shuts its socket down. smtplib reads
# the greeting, and SMTP_SSL shakes hands, inside connect(), before Django's backend
# holds the connection: these classes hand the socket over as soon as it is connected.
class _WatchedSMTP(smtplib.SMTP):
    # Whether this email's DATA went out: a disconnect after it may follow the server's
    # taking the email, and is no connection found dropped while it was kept idle.
    data_begun = False

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        # smtplib's, private: typeshed leaves it out.
        sock = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        deadlines.watch(sock)
        return sock

    def mail(self, sender: str, options: Any = ()) -> tuple[int, bytes]:
        self.data_begun = False  # each email starts with MAIL
        # Django gives the From with its name ("Billing <hello@[192.0.2.1]>"), and smtplib
        # takes the address out with email.utils.parseaddr, which a Python with the fix for
        # CVE-2023-27043 reads as none when its domain is a literal: smtplib sent it whole,
        # MAIL FROM:<Billing <hello@[192.0.2.1]>>, which the server refused (501).
        return super().mail(parseaddr(sender)[1] or sender, options)

    def data(self, msg: Any) -> tuple[int, bytes]:
        self.data_begun = True
        return super().data(msg)

    # smtplib encodes a login as ASCII (CPython issue 73936): a password or user with "ä"
    # or "€" raised a UnicodeEncodeError before AUTH went out, which failed every email
    # for good, its reason naming a character of the password and its place. They go as
    # UTF-8, as SASL PLAIN has them (RFC 4616) and servers take them for LOGIN and
    # CRAM-MD5 (bytes the environment held undecoded, as they were).
    def auth(
        self,
        mechanism: str,
        authobject: Callable[..., str | None],
        *,
        initial_response_ok: bool = True,
    ) -> tuple[int, bytes]:
        """smtplib's, each response to the server encoded as UTF-8."""

        def encoded(response: str) -> str:
            return base64.b64encode(_utf8(response)).decode("ascii")

        initial = authobject() if initial_response_ok else None
        if initial is not None:
            code, reply = self.docmd("AUTH", f"{mechanism.upper()} {encoded(initial)}")
            self._auth_challenge_count = 1  # auth_login answers by it: the user, then the password
        else:
            code, reply = self.docmd("AUTH", mechanism.upper())
            self._auth_challenge_count = 0
        while code == 334:
            self._auth_challenge_count += 1
            if self._auth_challenge_count > 5:  # as smtplib: no mechanism asks this often
                raise smtplib.SMTPException(
                    f"the server's AUTH never ends: {code} {smtp_reply(reply)}"
                )
            response = authobject(base64.decodebytes(reply))
            code, reply = self.docmd(encoded(response or ""))
        if code in (235, 503):
            return code, reply
        raise smtplib.SMTPAuthenticationError(code, reply)

    # typeshed's two overloads (None -> None, bytes -> str) in one signature: the same calls.
    def auth_cram_md5(self, challenge: bytes | None = None) -> str | None:  # type: ignore[override]
        if challenge is None:  # no initial response
            return None
        return f"{self.user} {hmac.HMAC(_utf8(self.password), challenge, 'md5').hexdigest()}"


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class _WatchedSMTPSSL(smtplib.SMTP_SSL, _WatchedSMTP):
    """SMTP_SSL wraps the socket _WatchedSMTP returns (its super()), watched before TLS."""


class _WatchedSmtpBackend(SmtpBackend):
    """Django's SMTP backend, whose new connections the send's deadline watches."""

    @property
    def connection_class(self) -> type[smtplib.SMTP]:
        return _WatchedSMTPSSL if self.use_ssl else _WatchedSMTP


def _socket_of(backend: BaseEmailBackend) -> socket.socket | None:
    """The socket of an SMTP backend's open connection; None for any other backend."""
    return getattr(getattr(backend, "connection", None), "sock", None)


# The server refusing norm's login, or mail without one (RFC 4954): 530 authentication
# required, 534 mechanism too weak, 535 credentials invalid, 538 encryption required.
_LOGIN_REFUSED = frozenset({530, 534, 535, 538})


def _for_now(code: int) -> bool:
    """Whether an SMTP reply of `code` may go another way on another try. A 4xx is the
    server's "try again later", a 5xx final, but for a login refused: that is the
    server's configuration or norm's (a password being rotated), not the email's nor its
    recipient's, and failed for good it lost every email of a broadcast sent meanwhile."""
    return code < 500 or code in _LOGIN_REFUSED


def _timed_out(seconds: float) -> str:
    return (
        f"SMTP send timed out after {seconds:g} s (EMAIL_SEND_DEADLINE): "
        "the server answered too slowly"
    )


def _sendable(message: Message) -> dict[str, Any]:
    """The email step's output, if the message can be sent to its recipient; a SendError
    for good otherwise."""
    if not message.recipient:
        raise SendError("the subscriber has no email address", transient=False)
    if _CONTROL.search(message.recipient):
        raise SendError(
            f"the subscriber's email address has a control character ({message.recipient!r:.100})",
            transient=False,
        )
    if "@" not in message.recipient:
        # Refused by the API, but a row stored before it refused them (or by hand) went
        # out as RCPT TO:<ann>, which a relay takes for a mailbox on its own host.
        raise SendError(
            f"the subscriber's email address has no domain ({message.recipient!r:.100}),"
            " which norm cannot send to",
            transient=False,
        )
    if message.recipient.startswith('""@'):
        # Taken as Novu takes it, but Python's email package writes an empty quoted local
        # part as none: the email went to "@example.com", no mailbox (or a catch-all's).
        raise SendError(
            f"the subscriber's email address has an empty local part ({message.recipient!r:.100}),"
            " which norm cannot send to",
            transient=False,
        )
    content: dict[str, Any] = message.content
    wrong = _email_output_wrong(content)
    if wrong:
        raise SendError(wrong, transient=False)
    return content


def _sender(client: Client, content: dict[str, Any]) -> tuple[str, str]:
    """The email's From and Reply-To ("" for none): the client's address, or the step's
    within the client's sender policy; a SendError for good if the policy refuses it."""
    sender = content.get("from") or {}
    policy_problem = stored_policy_problem(client.email_from, client.email_from_domains)
    if policy_problem:
        raise SendError(
            f"the client's sender policy cannot be applied: {policy_problem} Correct it"
            " in the admin.",
            transient=False,
        )
    from_email, address, reply_to = (
        client.email_from or settings.DEFAULT_FROM_EMAIL,
        _address(sender.get("email")),
        _address(content.get("replyTo")),
    )
    refused = sender_refused(address, client.email_from_domains) if address else ""
    if refused:
        raise SendError(refused, transient=False)
    name = one_line(sender.get("name") or "")
    if address or name:
        # A name alone goes with the address it would have gone from: the client's
        # address is not the bridge's to know.
        address = address or parseaddr(from_email)[1]
        # Quoted, as a display name: "Acme, Inc." is no list of two addresses. (Django
        # encodes a non-ASCII name, and the address's domain as IDNA.)
        from_email = f'"{quote(name)}" <{address}>' if name else address
    return from_email, reply_to


def _email_of(message: Message, content: dict[str, Any], from_email: str, reply_to: str) -> _Email:
    """The message's email: its text and HTML, from `from_email`, to its recipient."""
    body = content["body"]
    email = _Email(
        subject=one_line(content["subject"]),
        body=text_of(body),
        from_email=_with_ascii_domains(from_email),
        to=[_with_ascii_domains(message.recipient)],
        reply_to=[_with_ascii_domains(reply_to)] if reply_to else None,
        # The X-Norm-Message-Id (stored as provider_message_id) opens the Message-ID too.
        headers={"X-Norm-Message-Id": str(message.pk), "Message-ID": _message_id(message)},
    )
    html_body = with_preheader(body, content.get("preheader"))
    email.attach_alternative(html_body, "text/html")
    if _longer_than_a_line(email.body) or _longer_than_a_line(html_body):
        email.encoding = utf8_charset_qp  # Django's own, which it picks for a long line
    return email


# The line breaks SMTP and Python's email generator know: not str.splitlines' others.
_WIRE_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _longer_than_a_line(text: str) -> bool:
    """Whether a line of `text` is over the 998 octets SMTP carries. Django encodes such a
    body as quoted-printable, but finds its lines with str.splitlines, which also breaks
    at a vertical or form feed, a file separator, NEL or U+2028, all sent as text: 700
    characters, one of those and 700 more went out on one line, which a server refused
    (500, the email failed for good) or cut."""
    return any(
        len(line.encode("utf-8", "surrogateescape")) > 998 for line in _WIRE_LINE_BREAK.split(text)
    )


class _KeptConnection(threading.local):
    # (the email settings it was opened with, the backend, when it last sent)
    open: tuple[tuple[Any, ...], BaseEmailBackend, float] | None = None


class DjangoEmailProvider(Provider):
    """Email through Django's email framework: console in development, SMTP in production.

    A worker process (each thread of one) keeps one connection open between emails: a
    new one costs a TCP handshake, the greeting, EHLO (and TLS and AUTH) and QUIT for
    every email. One idle for longer than KEEP_OPEN seconds is replaced rather than trusted.
    Each send, whatever connection it is on, ends within EMAIL_SEND_DEADLINE seconds.
    """

    name = "django-email"
    channel = "email"
    KEEP_OPEN = 5.0
    # Each thread keeps its own: under Celery's threads pool, one thread's failure closed
    # the connection under the email another thread was sending on it.
    _kept: ClassVar[_KeptConnection] = _KeptConnection()

    def recipient(self, message: Message) -> str:
        return message.subscriber.email

    def unreachable(self, subscriber: Subscriber) -> str:
        return "" if subscriber.email else "the subscriber has no email address"

    def send(self, message: Message) -> str:
        content = _sendable(message)
        # The message worker gives the message its client as read with the step.
        from_email, reply_to = _sender(message.client, content)
        email = _email_of(message, content, from_email, reply_to)
        self._deliver_within_deadline(email)
        return email.extra_headers["X-Norm-Message-Id"]

    def _deliver_within_deadline(self, email: EmailMultiAlternatives) -> None:
        """Deliver `email` by EMAIL_SEND_DEADLINE, a failure told as a SendError: for now
        (another try may go another way) or for good."""
        try:
            with deadlines.within(settings.EMAIL_SEND_DEADLINE) as deadline:
                self._deliver(email, deadline)
        except smtplib.SMTPAuthenticationError as exc:
            # Refused the backend's login(), whatever the code: see _for_now. The settings
            # named and the server's reply; neither the user nor the password, which the
            # reason, shown to the client through the API, is no place for.
            raise SendError(
                "the SMTP login failed (EMAIL_HOST_USER, EMAIL_HOST_PASSWORD): "
                f"{exc.smtp_code} {smtp_reply(exc.smtp_error)}",
                transient=True,
            ) from exc
        except smtplib.SMTPResponseException as exc:
            # Its greeting or its reply to HELO refuses norm's connection (a 554 to an
            # address it does not serve, a name it does not take), before any email: the
            # server's or norm's configuration, as a login refused.
            refused_norm = isinstance(exc, (smtplib.SMTPConnectError, smtplib.SMTPHeloError))
            raise SendError(
                f"SMTP {exc.smtp_code}: {smtp_reply(exc.smtp_error)}",
                transient=refused_norm or _for_now(exc.smtp_code),
            ) from exc
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            refused = "; ".join(
                f"{address}: {code} {smtp_reply(reply)}"
                for address, (code, reply) in exc.recipients.items()
            )
            raise SendError(
                f"the SMTP server refused {refused}", transient=all(_for_now(c) for c in codes)
            ) from exc
        except ConnectionRefusedError as exc:
            # No server at that address: the settings, most often (an SMTP backend set and
            # EMAIL_HOST left at its default, localhost), rather than the server.
            raise SendError(
                f"SMTP connection failed: {exc} (check EMAIL_HOST and EMAIL_PORT)",
                transient=True,
            ) from exc
        except socket.gaierror as exc:
            # A name that does not resolve: a typo in the settings as often as a resolver
            # down, which is why it is tried again.
            raise SendError(
                f"SMTP connection failed: {exc} (check EMAIL_HOST)", transient=True
            ) from exc
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            raise SendError(f"SMTP connection failed: {exc}", transient=True) from exc
        except ValueError as exc:  # a newline in a header, an address Django refuses
            raise SendError(f"the message cannot be sent: {exc}", transient=False) from exc

    @classmethod
    def _deliver(cls, email: EmailMultiAlternatives, deadline: deadlines.Deadline) -> None:
        for attempt in (1, 2):
            reused = False
            try:
                email.connection, reused = cls._connection()
                if reused and (sock := _socket_of(email.connection)) is not None:
                    deadline.watch(sock)  # a new one's is watched as it connects
                needing = _beyond_ascii(email)
                if needing and isinstance(email.connection, SmtpBackend):
                    _send_smtputf8(email.connection, email, needing)
                else:
                    email.send()
            except Exception as exc:
                smtp = getattr(email.connection, "connection", None)  # close() lets go of it
                data_begun = getattr(smtp, "data_begun", False)
                cls.close()  # in an unknown state after a failure
                if deadline.expired:
                    # Whatever the cut looked like (a reply ended early, a disconnect): not
                    # sent again at once, as the server may have taken the email.
                    raise SendError(
                        _timed_out(settings.EMAIL_SEND_DEADLINE), transient=True
                    ) from exc
                # A kept connection the server has since dropped (or drops with 421,
                # "closing the channel") fails before the message was accepted: once
                # more, on a new connection. Not a reply that timed out (smtplib reports
                # it as a disconnect too), nor a disconnect once the DATA went out: the
                # server may have taken the email by then.
                dropped = (
                    isinstance(exc, smtplib.SMTPServerDisconnected)
                    and not isinstance(exc.__context__, TimeoutError)
                    and not data_begun
                ) or (isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code == 421)
                if attempt == 2 or not (reused and dropped):
                    raise
            else:
                deadline.end()  # from now on, the watchdog leaves the kept connection alone
                if deadline.expired:  # cut just after the server's whole reply: sent, but
                    cls.close()  # the connection is of no more use
                    return
                key, backend, _ = cls._kept.open  # type: ignore[misc]
                cls._kept.open = (key, backend, time.monotonic())
                return

    @classmethod
    def _connection(cls) -> tuple[BaseEmailBackend, bool]:
        """The open connection, and whether it served an email before."""
        settings_key = tuple(
            getattr(settings, name)
            for name in ("EMAIL_BACKEND", "EMAIL_HOST", "EMAIL_PORT", "EMAIL_HOST_USER")
            + ("EMAIL_USE_TLS", "EMAIL_USE_SSL", "EMAIL_TIMEOUT")
        )
        if cls._kept.open is not None:
            key, backend, used_at = cls._kept.open
            if key == settings_key and time.monotonic() - used_at < cls.KEEP_OPEN:
                return backend, True
            cls.close()
        backend_class = import_string(settings.EMAIL_BACKEND)
        if backend_class is SmtpBackend:
            # Another class (a subclass of it) opens connections of its own, bounded by
            # EMAIL_TIMEOUT per operation until kept; a kept one is watched all the same.
            backend_class = _WatchedSmtpBackend
        backend = backend_class(timeout=settings.EMAIL_TIMEOUT)
        try:
            backend.open()
        except Exception:
            # Django keeps a connection that failed after the greeting (its EHLO, STARTTLS
            # or login refused) for the backend's close(), and the backend is dropped here:
            # its socket stayed open, the server given no QUIT, until the garbage collector
            # freed it (smtplib's login holds its error in a reference cycle), one more
            # connection for every email while the password was wrong.
            with contextlib.suppress(Exception):
                backend.close()
            raise
        cls._kept.open = (settings_key, backend, time.monotonic())
        return backend, False

    @classmethod
    def close(cls) -> None:
        if cls._kept.open is not None:
            backend, cls._kept.open = cls._kept.open[1], None
            # Under a send's deadline, QUIT's reply is waited for within it too.
            deadline = deadlines.current()
            if deadline is not None and (sock := _socket_of(backend)) is not None:
                deadline.watch(sock)
            with contextlib.suppress(Exception):  # it may be broken already
                backend.close()
            if deadline is not None:
                deadline.unwatch()  # the send may go on over a new connection


class InboxProvider(Provider):
    """In-app: the stored message is the delivery; the subscriber's feed reads it."""

    name = "inbox"
    channel = "in_app"
    stores_only = True

    def send(self, message: Message) -> str:
        content = message.content
        wrong = wrong_output(content, optional=("subject", "body"))
        if wrong or not (content.get("subject") or content.get("body")):
            raise SendError(wrong or "the step's output has no subject or body", transient=False)
        return ""


PROVIDERS: dict[str, type[Provider]] = {p.name: p for p in (DjangoEmailProvider, InboxProvider)}


def provider_for(channel: str) -> Provider | None:
    """The provider NORM_PROVIDERS names for `channel`; None if it names none, or one of
    another channel."""
    name = settings.NORM_PROVIDERS.get(channel)
    provider = PROVIDERS.get(name) if name else None
    return provider() if provider and provider.channel == channel else None
