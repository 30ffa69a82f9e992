"""An email send ends within EMAIL_SEND_DEADLINE, however slowly the SMTP server answers.

smtplib's timeout (EMAIL_TIMEOUT) bounds each socket read, not the send: a server (or a
middlebox) that sends a byte every fifth of a second never trips it, and holds the
message worker for good. These servers do exactly that, on loopback, for a while (then
give up, so that a build without the deadline fails its tests rather than hang them).
"""

from __future__ import annotations

import asyncio
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.mail.utils import DNS_NAME

from messaging import providers
from messaging.models import Message
from tests.conftest import SlowLookups, self_signed, serve_in_background
from tests.messaging.test_message_worker import SMTP, Inbox, email_step, smtp_serving
from workflows.models import Step

pytestmark = pytest.mark.django_db

DEADLINE = 2
DRIP = 0.2  # seconds between two bytes: well under EMAIL_TIMEOUT
BYTES = 60  # how many the servers trickle before giving up (12 s)
TIMED_OUT = f"SMTP send timed out after {DEADLINE} s (EMAIL_SEND_DEADLINE)"


@pytest.fixture(autouse=True)
def _deadline(settings: Any) -> None:
    settings.EMAIL_SEND_DEADLINE = DEADLINE
    settings.EMAIL_TIMEOUT = 30  # longer than the servers trickle: only the deadline cuts


class _Trickling(socketserver.ThreadingTCPServer):
    """Accepts (over TLS, with `tls`), and sends `data` one byte at a time; then closes
    the connection."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, data: bytes, tls: ssl.SSLContext | None, port: int) -> None:
        self.data, self.tls = data, tls
        self.stop, self.gave_up = threading.Event(), threading.Event()
        super().__init__(("127.0.0.1", port), _TrickleHandler)


class _TrickleHandler(socketserver.BaseRequestHandler):
    server: _Trickling

    def handle(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if self.server.tls:
                self.request = self.server.tls.wrap_socket(self.request, server_side=True)
            for byte in self.server.data:
                if self.server.stop.wait(DRIP):
                    return
                self.request.sendall(bytes([byte]))
            self.server.gave_up.set()
        except OSError:
            pass  # the client gave up: what the tests want


@pytest.fixture
def trickling(settings: Any) -> Iterator[Callable[..., _Trickling]]:
    """A server trickling the bytes given, and norm's email pointed at it."""
    servers: list[_Trickling] = []

    def start(data: bytes, tls: ssl.SSLContext | None = None, port: int = 0) -> _Trickling:
        server = _Trickling(data, tls, port)
        serve_in_background(server)
        servers.append(server)
        settings.EMAIL_BACKEND = SMTP
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", server.server_address[1]
        settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
        return server

    yield start
    for server in servers:
        server.stop.set()
        server.shutdown()
        server.server_close()


def _timed_out(step: Step, server: Any) -> None:
    # The send ended while the server still trickled: cut by the deadline, not ended by
    # the server (which a send left unwatched waits for, and times out all the same).
    assert not server.gave_up.is_set(), "the send waited until the server gave up"
    assert step.status == Step.Status.SCHEDULED, step.error  # transient: retried after a backoff
    assert TIMED_OUT in step.error
    assert TIMED_OUT in Message.objects.get(step=step).error
    assert providers.DjangoEmailProvider._kept.open is None  # never reused


def test_a_greeting_sent_a_byte_at_a_time_fails_the_send_at_the_deadline(
    send: Callable[[Step], Step], trickling: Callable[..., _Trickling], settings: Any
) -> None:
    """smtplib reads the greeting inside connect(), before Django's backend has the
    connection: the socket is watched from the moment it is connected."""
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    server = trickling(b"220 " + b"." * (BYTES - 4))

    _timed_out(send(email_step()), server)

    inbox = Inbox()
    with smtp_serving(settings, inbox):
        step = send(email_step(notification__subscriber__email="bob@example.com"))
    assert step.status == Step.Status.COMPLETED, step.error
    assert [e.rcpt_tos for e in inbox.envelopes] == [["bob@example.com"]]


def test_a_host_the_resolver_is_slow_to_look_up_fails_the_send_at_the_deadline(
    send: Callable[[Step], Step], slow_lookups: SlowLookups, settings: Any
) -> None:
    """The lookup of EMAIL_HOST, made before any socket exists, is waited for only until
    the deadline: a name server that is down held the message worker as long as the
    resolver retried (30 s by resolv.conf's defaults), and then sent."""
    inbox = Inbox()
    with smtp_serving(settings, inbox, server_hostname="smtp.test"):  # no lookup of its own
        settings.EMAIL_HOST = "localhost"
        step = send(email_step())

    assert not slow_lookups.answered.is_set(), "the send waited for the name server to answer"
    assert step.status == Step.Status.SCHEDULED, step.error  # transient: retried after a backoff
    assert TIMED_OUT in step.error
    assert inbox.envelopes == []


def test_the_name_norm_greets_the_smtp_server_with_is_looked_up_within_the_deadline(
    send: Callable[[Step], Step],
    slow_lookups: SlowLookups,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Django's SMTP backend greets the server (EHLO) with socket.getfqdn(), a reverse
    lookup in the C library made on a process's first email: a name server that is down
    held that email past the deadline, as long as the resolver retried."""
    monkeypatch.delattr(DNS_NAME, "_fqdn", raising=False)  # this process's first email
    inbox = Inbox()
    # EMAIL_HOST an address, and the server's name given: neither looked up.
    with smtp_serving(settings, inbox, server_hostname="smtp.test"):
        step = send(email_step())

    assert slow_lookups.made and not slow_lookups.answered.is_set()
    assert step.status == Step.Status.SCHEDULED, step.error  # transient: retried after a backoff
    assert TIMED_OUT in step.error
    assert inbox.envelopes == []


def test_a_kept_connection_found_dropped_is_replaced_under_the_same_deadline(
    send: Callable[[Step], Step], trickling: Callable[..., _Trickling], settings: Any
) -> None:
    """The email goes once more on a new connection, whose greeting is then trickled:
    the deadline watches that connection, not only the first one of the send."""
    with smtp_serving(settings, Inbox()):
        assert send(email_step()).status == Step.Status.COMPLETED
        port = settings.EMAIL_PORT
    _, backend, _ = providers.DjangoEmailProvider._kept.open  # type: ignore[misc]
    backend.connection.sock.shutdown(socket.SHUT_RDWR)  # as a server's idle timeout would
    server = trickling(b"220 " + b"." * (BYTES - 4), port=port)  # the same server, trickling

    _timed_out(send(email_step(notification__subscriber__email="bob@example.com")), server)


@pytest.fixture
def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A server context for 127.0.0.1, with a certificate the email backend trusts
    (OpenSSL's default CA file, which Django's default SSL context loads)."""
    cert_path, key_path = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_path))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context


def test_over_tls_a_greeting_sent_a_byte_at_a_time_fails_the_send_at_the_deadline(
    send: Callable[[Step], Step],
    trickling: Callable[..., _Trickling],
    tls: ssl.SSLContext,
    settings: Any,
) -> None:
    settings.EMAIL_USE_SSL, settings.EMAIL_USE_TLS = True, False
    server = trickling(b"220 " + b"." * (BYTES - 4), tls)

    _timed_out(send(email_step()), server)


def test_a_tls_handshake_sent_a_byte_at_a_time_fails_the_send_at_the_deadline(
    send: Callable[[Step], Step], trickling: Callable[..., _Trickling], settings: Any
) -> None:
    """EMAIL_USE_SSL: smtplib shakes hands inside connect(). (CPython bounds a whole
    handshake by the socket's timeout, EMAIL_TIMEOUT; the send's deadline covers it
    too: the socket is watched before TLS reads from it.)"""
    settings.EMAIL_USE_SSL, settings.EMAIL_USE_TLS = True, False
    # A TLS record header announcing a 16 KiB handshake message, which never comes whole.
    server = trickling(bytes([0x16, 0x03, 0x03, 0x40, 0x00]) + b"\x00" * (BYTES - 5))

    _timed_out(send(email_step()), server)


class TricklesItsReply(Inbox):
    """Answers the DATA of the email to `trickle_to`, or with `trickle_quit` a QUIT, a
    byte at a time, for a while."""

    def __init__(self) -> None:
        super().__init__()
        self.trickle_to, self.trickle_quit = "", False
        self.stop, self.gave_up = threading.Event(), threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if envelope.rcpt_tos != [self.trickle_to]:
            return await super().handle_DATA(server, session, envelope)
        self.envelopes.append(envelope)
        self.peers.append(session.peer)
        return await self._trickle(server, b"451 ")

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        return await self._trickle(server, b"221 ") if self.trickle_quit else "221 Bye"

    async def _trickle(self, server: Any, code: bytes) -> str:
        for byte in code + b"." * (BYTES - len(code)):
            if self.stop.is_set():
                break
            server.transport.write(bytes([byte]))
            await asyncio.sleep(DRIP)
        else:
            self.gave_up.set()
        return " the end of the line"


def test_a_reply_sent_a_byte_at_a_time_on_a_kept_connection_fails_the_send_at_the_deadline(
    send: Callable[[Step], Step], settings: Any
) -> None:
    """The cut connection is dropped, and the email (which the server may have taken) is
    not sent again at once; the next email goes out on a new connection."""
    inbox = TricklesItsReply()
    inbox.trickle_to = "bob@example.com"
    with smtp_serving(settings, inbox):
        try:
            assert send(email_step()).status == Step.Status.COMPLETED

            _timed_out(send(email_step(notification__subscriber__email="bob@example.com")), inbox)
            inbox.stop.set()

            step = send(email_step(notification__subscriber__email="carl@example.com"))
        finally:
            inbox.stop.set()

    assert step.status == Step.Status.COMPLETED and step.attempts == 1, step.error
    assert [e.rcpt_tos for e in inbox.envelopes] == [
        ["ann@example.com"],
        ["bob@example.com"],
        ["carl@example.com"],
    ]
    assert inbox.peers[0] == inbox.peers[1] != inbox.peers[2]


def test_the_quit_of_a_connection_idle_too_long_is_under_the_deadline_too(
    send: Callable[[Step], Step], settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kept connection idle too long is closed, its QUIT answered, before the send
    opens a new one: a QUIT answered a byte at a time is cut like any other reply."""
    monkeypatch.setattr(providers.DjangoEmailProvider, "KEEP_OPEN", 0.0)
    inbox = TricklesItsReply()
    with smtp_serving(settings, inbox):
        try:
            assert send(email_step()).status == Step.Status.COMPLETED
            inbox.trickle_quit = True

            _timed_out(send(email_step(notification__subscriber__email="bob@example.com")), inbox)
            inbox.stop.set()

            step = send(email_step(notification__subscriber__email="carl@example.com"))
        finally:
            inbox.stop.set()

    assert step.status == Step.Status.COMPLETED, step.error
    assert [e.rcpt_tos for e in inbox.envelopes] == [["ann@example.com"], ["carl@example.com"]]
