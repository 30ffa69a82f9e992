"""The admin's login, throttled per username and address (notify.logins)."""

from __future__ import annotations

import socket
from types import SimpleNamespace
from typing import Any

import pytest
from django.test import Client as Browser
from django.urls import reverse

from notify import logins
from tests.e2e.harness import wait_for

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/"
GUESSER = "203.0.113.7"
ADMIN_AT = "198.51.100.4"
REFUSED = "Too many failed logins"


@pytest.fixture
def staff(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user(
        "ops", password="right-password", is_staff=True, is_superuser=True
    )


def _login(username: str, password: str, address: str) -> tuple[Browser, str]:
    browser = Browser()
    response = browser.post(
        LOGIN, {"username": username, "password": password}, REMOTE_ADDR=address
    )
    return browser, response.content.decode() if response.status_code == 200 else ""


def _logged_in(browser: Browser) -> bool:
    return "_auth_user_id" in browser.session


def _guess(times: int, username: str = "ops", address: str = GUESSER) -> None:
    for _ in range(times):
        browser, page = _login(username, "a-guess", address)
        assert not _logged_in(browser) and "Please enter the correct username" in page


def test_guesses_of_a_username_from_one_address_are_refused_unchecked(
    counters: None, staff: Any
) -> None:
    _guess(logins.LOGIN_FAILURES)

    browser, page = _login("ops", "right-password", GUESSER)

    # The right password too: whether a guess was right is not told while refused.
    assert not _logged_in(browser)
    assert REFUSED in page and "15 minutes" in page


def test_the_refusal_holds_no_one_else_out(counters: None, staff: Any, django_user_model) -> None:
    django_user_model.objects.create_user("dev", password="dev-password", is_staff=True)
    _guess(logins.LOGIN_FAILURES)

    # The admin from their own address, another user from the guesser's: both log in.
    assert _logged_in(_login("ops", "right-password", ADMIN_AT)[0])
    assert _logged_in(_login("dev", "dev-password", GUESSER)[0])
    # However the username is spelled, it is the same one's guesses.
    assert REFUSED in _login("OPS", "a-guess", GUESSER)[1]


def test_guesses_from_the_addresses_of_one_ipv6_network_count_together(
    counters: None, staff: Any
) -> None:
    # An IPv6 host picks from a /64 of its own: each address its own count, no bound.
    for i in range(logins.LOGIN_FAILURES):
        _guess(1, address=f"2001:db8:7:1::{i + 1:x}")

    assert REFUSED in _login("ops", "right-password", "2001:db8:7:1:ffff::99")[1]
    assert _logged_in(_login("ops", "right-password", "2001:db8:7:2::1")[0])


def test_ipv4_clients_of_a_dual_stack_socket_count_as_their_ipv4_address(
    counters: None, staff: Any
) -> None:
    # A server listening on [::] sees each IPv4 client as ::ffff:a.b.c.d: taken for an
    # IPv6 host, every IPv4 client would fall in one /64 (::/64), and a guesser anywhere
    # would hold the admin out from everywhere.
    _guess(logins.LOGIN_FAILURES, address=f"::ffff:{GUESSER}")

    assert REFUSED in _login("ops", "right-password", GUESSER)[1]
    assert _logged_in(_login("ops", "right-password", f"::ffff:{ADMIN_AT}")[0])


def test_the_refusal_ends_on_its_own(
    counters: None, staff: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Long enough for the guesses and the refused login to fall within it on a loaded
    # machine: at 1 s they took longer in 5 runs of 30, and the refusal had ended.
    monkeypatch.setattr(logins, "LOGIN_LOCK_SECONDS", 3)
    _guess(logins.LOGIN_FAILURES)
    assert REFUSED in _login("ops", "right-password", GUESSER)[1]

    # A refused login is not counted: the admin tries again until the refusal has ended.
    wait_for(
        lambda: _logged_in(_login("ops", "right-password", GUESSER)[0]),
        timeout=30,
        what="the refusal to end",
    )


def test_the_refusal_says_when_it_ends(
    counters: None, staff: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal runs from the first failure: guesses spread over 14 minutes are held
    off one minute more, which the page gave as 15."""
    clock = [1_000_000.0]
    monkeypatch.setattr(logins, "time", SimpleNamespace(time=lambda: clock[0]), raising=False)
    _guess(1)
    clock[0] += 14 * 60 + 10
    _guess(logins.LOGIN_FAILURES - 1)

    page = _login("ops", "right-password", GUESSER)[1]

    assert REFUSED in page and "try again in 1 minute." in page


def test_the_fifth_failure_refuses_the_next_login_as_the_readme_says(
    counters: None, staff: Any
) -> None:
    """The README promises 5 failures, not LOGIN_FAILURES: the other tests count with the
    constant, and any value of it passed them."""
    _guess(4)
    assert "Please enter the correct username" in _login("ops", "a-guess", GUESSER)[1]

    browser, page = _login("ops", "right-password", GUESSER)

    assert not _logged_in(browser) and REFUSED in page


def test_a_refusal_its_clock_says_is_over_still_says_a_minute(
    counters: None, staff: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counter outlives its end by the cache's clock (another web process's clock is
    behind, or the cache's own): the page says to try again in a minute, not in 0 or
    fewer minutes."""
    clock = [1_000_000.0]
    monkeypatch.setattr(logins, "time", SimpleNamespace(time=lambda: clock[0]), raising=False)
    _guess(logins.LOGIN_FAILURES)
    clock[0] += logins.LOGIN_LOCK_SECONDS + 90

    page = _login("ops", "right-password", GUESSER)[1]

    assert REFUSED in page and "try again in 1 minute." in page


def test_a_login_clears_the_failures_before_it(counters: None, staff: Any) -> None:
    _guess(logins.LOGIN_FAILURES - 1)
    assert _logged_in(_login("ops", "right-password", GUESSER)[0])

    _guess(logins.LOGIN_FAILURES - 1)

    assert _logged_in(_login("ops", "right-password", GUESSER)[0])


def test_logins_go_on_uncounted_while_the_counters_redis_is_down(
    settings: Any, staff: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{port}/0",
            "OPTIONS": {"socket_connect_timeout": 1},
        }
    }

    _guess(1)

    assert _logged_in(_login("ops", "right-password", GUESSER)[0])
    assert "not counted" in caplog.text


@pytest.mark.parametrize("password", ["admin", "1", "12345678", "password123"])
def test_an_admin_password_is_checked_as_djangos_project_template_checks_it(
    client: Any, staff: Any, password: str
) -> None:
    client.force_login(staff)

    response = client.post(
        reverse("admin:password_change"),
        {"old_password": "right-password", "new_password1": password, "new_password2": password},
    )

    assert response.status_code == 200  # the form again, with its errors; not a redirect
    staff.refresh_from_db()
    assert staff.check_password("right-password")


def test_a_strong_admin_password_is_taken(client: Any, staff: Any) -> None:
    client.force_login(staff)
    strong = "correct horse battery staple"

    response = client.post(
        reverse("admin:password_change"),
        {"old_password": "right-password", "new_password1": strong, "new_password2": strong},
    )

    assert response.status_code == 302
    staff.refresh_from_db()
    assert staff.check_password(strong)


PROXY = "10.0.0.2"


def _login_proxied(username: str, password: str, forwarded: str) -> tuple[Browser, str]:
    """A login through a proxy at PROXY that appends the peer it saw to X-Forwarded-For
    (nginx's $proxy_add_x_forwarded_for): `forwarded` is the header norm receives."""
    browser = Browser()
    response = browser.post(
        LOGIN,
        {"username": username, "password": password},
        REMOTE_ADDR=PROXY,
        HTTP_X_FORWARDED_FOR=forwarded,
    )
    return browser, response.content.decode() if response.status_code == 200 else ""


def test_behind_a_trusted_proxy_a_guesser_holds_off_no_one_else(
    counters: None, staff: Any, settings: Any
) -> None:
    """NORM_NUM_PROXIES=1: each login counted by the address the proxy saw. Counted by
    the proxy's, as before, one guesser held the username off for everyone."""
    settings.NORM_NUM_PROXIES = 1
    for i in range(logins.LOGIN_FAILURES):
        # Entries of the guesser's own, before the proxy's, change nothing.
        browser, page = _login_proxied("ops", "a-guess", f"192.0.2.{i + 1}, {GUESSER}")
        assert not _logged_in(browser) and "Please enter the correct username" in page

    assert REFUSED in _login_proxied("ops", "right-password", GUESSER)[1]
    assert _logged_in(_login_proxied("ops", "right-password", ADMIN_AT)[0])
    # Some proxies write the client's port, which it picks for each connection.
    assert REFUSED in _login_proxied("ops", "right-password", f"{GUESSER}:51234")[1]


def test_with_no_proxy_trusted_a_client_cannot_name_its_address(
    counters: None, staff: Any, settings: Any
) -> None:
    """NORM_NUM_PROXIES=0, the default: X-Forwarded-For is the client's to write, so it
    is not read; each guess naming another address is still the peer's."""
    settings.NORM_NUM_PROXIES = 0
    for i in range(logins.LOGIN_FAILURES):
        browser = Browser()
        browser.post(
            LOGIN,
            {"username": "ops", "password": "a-guess"},
            REMOTE_ADDR=GUESSER,
            HTTP_X_FORWARDED_FOR=f"192.0.2.{i + 1}",
        )
        assert not _logged_in(browser)

    assert REFUSED in _login("ops", "right-password", GUESSER)[1]


def test_behind_a_trusted_proxy_an_ipv6_clients_port_makes_no_new_address(
    counters: None, staff: Any, settings: Any
) -> None:
    """A proxy that writes the client's port writes an IPv6 client's as `[addr]:port`:
    kept, each connection of the guesser (its own port) was a count of its own."""
    settings.NORM_NUM_PROXIES = 1
    for port in range(51234, 51234 + logins.LOGIN_FAILURES):
        browser, page = _login_proxied("ops", "a-guess", f"[2001:db8:7:1::1]:{port}")
        assert not _logged_in(browser) and "Please enter the correct username" in page

    assert REFUSED in _login_proxied("ops", "right-password", "[2001:db8:7:1::2]:40000")[1]


def test_behind_a_trusted_proxy_a_call_by_no_proxy_is_counted_by_its_peer(
    counters: None, staff: Any, settings: Any
) -> None:
    """A login without X-Forwarded-For (made from inside, around the proxy) is counted by
    the address connecting to norm, not a 500."""
    settings.NORM_NUM_PROXIES = 1
    _guess(logins.LOGIN_FAILURES)

    assert REFUSED in _login("ops", "right-password", GUESSER)[1]
    assert _logged_in(_login("ops", "right-password", ADMIN_AT)[0])


def test_behind_two_trusted_proxies_a_call_through_one_is_counted_by_its_entry(
    counters: None, staff: Any, settings: Any
) -> None:
    """NORM_NUM_PROXIES=2 and a login whose X-Forwarded-For has one entry (made past the
    outer proxy, through the inner one): counted by the farthest address it names, not
    a 500."""
    settings.NORM_NUM_PROXIES = 2
    for _ in range(logins.LOGIN_FAILURES):
        browser, page = _login_proxied("ops", "a-guess", GUESSER)
        assert not _logged_in(browser) and "Please enter the correct username" in page

    assert REFUSED in _login_proxied("ops", "right-password", GUESSER)[1]
    assert _logged_in(_login_proxied("ops", "right-password", ADMIN_AT)[0])
