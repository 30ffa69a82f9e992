"""`manage.py createclient`: a client and a key that authenticates, printed once."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from notify import crypto, selectors, services
from notify.models import Client, SecretKey
from tests.factories import client_with_key

pytestmark = pytest.mark.django_db

BRIDGE = "http://127.0.0.1:9000/api/novu"
NOVU_KEY = "0123456789abcdef0123456789abcdef"  # a Novu secret key: 32 hex characters


def createclient(*args: str) -> list[str]:
    out = StringIO()
    call_command("createclient", *args, stdout=out)
    return out.getvalue().splitlines()


def test_creates_a_client_whose_printed_key_authenticates() -> None:
    lines = createclient("shop", "--bridge-url", BRIDGE, "--allowed-bridge-url", BRIDGE + "2")

    client = Client.objects.get(name="shop")
    assert (client.bridge_url, client.allowed_bridge_urls) == (BRIDGE, [BRIDGE + "2"])
    key = lines[-1]
    assert selectors.client_by_api_key(key=key) == client
    stored = SecretKey.objects.get(client=client)
    assert key not in (stored.key_hash, stored.encrypted)  # stored hashed and encrypted only
    assert crypto.decrypt(stored.encrypted) == key and stored.prefix == key[:10]


def test_a_bridge_urls_password_is_stored_but_not_printed() -> None:
    url = "https://ops-user:s3cret-pass@bridge.test/api/novu"
    lines = createclient("shop", "--bridge-url", url)

    assert Client.objects.get(name="shop").bridge_url == url
    assert "bridge https://ops-user:***@bridge.test/api/novu." in lines[0]
    assert not [line for line in lines if "s3cret-pass" in line]


def test_a_given_key_is_used_and_shown_by_a_quarter_of_it_at_most() -> None:
    lines = createclient("shop", "--bridge-url", BRIDGE, "--secret-key", NOVU_KEY)

    assert lines[-1] == NOVU_KEY
    assert selectors.client_by_api_key(key=NOVU_KEY).name == "shop"
    assert SecretKey.objects.get().prefix == NOVU_KEY[:8]


def test_a_short_key_is_refused_and_nothing_created() -> None:
    with pytest.raises(CommandError, match="at least 16 characters"):
        createclient("shop", "--bridge-url", BRIDGE, "--secret-key", "sk_short")
    assert not Client.objects.exists() and not SecretKey.objects.exists()
    client = client_with_key()[0]
    with pytest.raises(ValueError):
        services.secret_key_create(client=client, key="sk_short")
    with pytest.raises(ValueError):
        services.secret_key_create(client=client, key="k" * 15)
    assert services.secret_key_create(client=client, key="k" * 16)[1] == "k" * 16


def test_an_existing_client_is_an_error_unless_if_missing() -> None:
    createclient("shop", "--bridge-url", BRIDGE)
    with pytest.raises(CommandError, match="exists already"):
        createclient("shop", "--bridge-url", BRIDGE)

    lines = createclient("shop", "--bridge-url", BRIDGE, "--if-missing", "--secret-key", NOVU_KEY)
    again = createclient("shop", "--bridge-url", BRIDGE, "--if-missing", "--secret-key", NOVU_KEY)

    assert Client.objects.count() == 1
    assert lines[-1] == again[-1] == NOVU_KEY
    assert SecretKey.objects.filter(client__name="shop").count() == 2  # its first key, and this


def test_if_missing_says_when_the_clients_bridge_is_not_the_one_given() -> None:
    """A deploy script whose --bridge-url changed: the client kept the old one, and the
    command said only that it existed."""
    createclient("shop", "--bridge-url", BRIDGE)
    err = StringIO()

    call_command("createclient", "shop", "--bridge-url", BRIDGE, "--if-missing", stderr=err)
    assert err.getvalue() == ""
    out = StringIO()
    call_command(
        "createclient", "shop", "--bridge-url", BRIDGE + "2", "--if-missing", stdout=out, stderr=err
    )

    assert out.getvalue() == "Client 'shop' exists already.\n"
    assert f"Its bridge is {BRIDGE}, not the --bridge-url given ({BRIDGE}2)" in err.getvalue()
    assert Client.objects.get(name="shop").bridge_url == BRIDGE


def test_if_missing_refuses_a_key_revoked_or_of_another_client() -> None:
    other, other_key = client_with_key()
    createclient("shop", "--bridge-url", BRIDGE, "--secret-key", NOVU_KEY)
    services.secret_key_revoke(secret_key=SecretKey.objects.get(client__name="shop"))

    for key in (NOVU_KEY, other_key):
        with pytest.raises(CommandError, match="revoked, or belongs to another client"):
            createclient("shop", "--bridge-url", BRIDGE, "--if-missing", "--secret-key", key)
    assert selectors.client_by_api_key(key=other_key) == other


def test_a_bridge_on_a_self_hosted_host_name_is_taken() -> None:
    createclient(
        "shop",
        "--bridge-url",
        "http://web:8000/api/novu",
        "--allowed-bridge-url",
        "http://bridge:4000/api/novu",
    )
    client = Client.objects.get(name="shop")
    assert client.bridge_urls() == ["http://web:8000/api/novu", "http://bridge:4000/api/novu"]


@pytest.mark.parametrize(
    "urls",
    [
        ["--bridge-url", "bridge:4000/api/novu"],
        ["--bridge-url", "ftp://bridge:4000/api/novu"],
        ["--bridge-url", BRIDGE, "--allowed-bridge-url", "not a url"],
    ],
)
def test_a_bridge_url_that_is_no_http_url_is_refused(urls: list[str]) -> None:
    """norm would fail every trigger of a client it cannot call."""
    with pytest.raises(CommandError, match="not an http"):
        createclient("shop", *urls)
    assert not Client.objects.exists() and not SecretKey.objects.exists()


def test_a_bridge_url_refused_is_printed_without_its_password() -> None:
    """The refusal quoted the URL whole, password and all, into a deploy's log, say,
    where the admin and the stored client's line mask it."""
    with pytest.raises(CommandError) as refused:
        createclient("shop", "--bridge-url", "ftp://norm:s3cret@bridge:4000/api/novu")
    assert "s3cret" not in str(refused.value)
    assert "ftp://norm:***@bridge:4000/api/novu" in str(refused.value)


@pytest.mark.parametrize("option", ["--bridge-url", "--allowed-bridge-url"])
def test_a_bridge_url_longer_than_a_client_holds_is_refused_and_nothing_created(
    option: str,
) -> None:
    """As the admin refuses it: a bridge_url past its column was PostgreSQL's DataError,
    a traceback, and an allowed URL so long was stored, for no trigger to name it (a
    resource is at most as long as a bridge_url)."""
    long_url = f"{BRIDGE}?token={'t' * 500}"
    urls = (
        [option, long_url]
        if option == "--bridge-url"
        else ["--bridge-url", BRIDGE, option, long_url]
    )
    with pytest.raises(CommandError, match="at most 500 characters"):
        createclient("shop", *urls)
    assert not Client.objects.exists() and not SecretKey.objects.exists()


def test_a_sender_policy_is_stored_with_the_client() -> None:
    createclient(
        "shop",
        "--bridge-url",
        BRIDGE,
        "--email-from",
        '"Acme, Inc." <hello@acme.example>',
        "--email-from-domain",
        "acme.example",
        "--email-from-domain",
        "mail.acme.example",
    )

    client = Client.objects.get(name="shop")
    assert client.email_from == '"Acme, Inc." <hello@acme.example>'
    assert client.email_from_domains == ["acme.example", "mail.acme.example"]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--email-from", "Acme, Inc. <hello@acme.example>"], "is no email address"),
        (["--email-from", "hello"], "'hello' is no email address"),
        (
            ["--email-from", "hello@globex.example", "--email-from-domain", "acme.example"],
            r"hello@globex.example is not within the client's sender domains \(acme.example\)",
        ),
        (["--email-from-domain", "*.acme.example"], "is no domain name"),
        (["--email-from-domain", "hello@acme.example"], "is an address"),
    ],
)
def test_a_sender_policy_the_client_cannot_have_is_refused_and_nothing_created(
    args: list[str], error: str
) -> None:
    with pytest.raises(CommandError, match=error):
        createclient("shop", "--bridge-url", BRIDGE, *args)
    assert not Client.objects.exists() and not SecretKey.objects.exists()


@pytest.mark.parametrize("if_missing", [[], ["--if-missing"]], ids=["plain", "if-missing"])
def test_a_new_client_given_another_clients_key_is_refused_and_nothing_created(
    if_missing: list[str],
) -> None:
    """Its hash is taken: the key's unique constraint refused it with an IntegrityError
    traceback, where --if-missing on an existing client says why."""
    other, other_key = client_with_key()
    with pytest.raises(CommandError, match="revoked, or belongs to another client"):
        createclient("shop", "--bridge-url", BRIDGE, "--secret-key", other_key, *if_missing)
    assert not Client.objects.filter(name="shop").exists()
    assert selectors.client_by_api_key(key=other_key) == other


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["x" * 201, "--bridge-url", BRIDGE], "name: a client's name has at most 200"),
        (
            ["shop", "--bridge-url", BRIDGE, "--email-from", f"{'h' * 310}@acme.example"],
            "email_from: a client's email_from has at most 320",
        ),
        (["  ", "--bridge-url", BRIDGE], "name may not be empty"),
    ],
)
def test_a_value_longer_than_its_column_or_an_empty_name_is_refused_naming_it(
    args: list[str], error: str
) -> None:
    """As the admin refuses them: past its column, PostgreSQL refused the name or the
    email_from with a DataError, a traceback; a name of white space was stored empty."""
    with pytest.raises(CommandError, match=error):
        createclient(*args)
    assert not Client.objects.exists() and not SecretKey.objects.exists()


def test_the_name_and_bridge_urls_are_stored_trimmed_as_the_admin_stores_them() -> None:
    """The admin trims a client's name; createclient stored " shop " as typed, and
    `createclient shop --if-missing` then found no "shop" and made a second client. So
    too a sender domain, as the admin's form stores it."""
    createclient(
        " shop ",
        *("--bridge-url", f" {BRIDGE} ", "--allowed-bridge-url", f"{BRIDGE}2 "),
        *("--email-from-domain", " acme.example\n"),
    )
    lines = createclient("shop", "--bridge-url", BRIDGE, "--if-missing")

    client = Client.objects.get()
    assert client.name == "shop" and lines == ["Client 'shop' exists already."]
    assert client.bridge_urls() == [BRIDGE, BRIDGE + "2"]
    assert client.email_from_domains == ["acme.example"]
    with pytest.raises(CommandError, match="exists already"):
        createclient("shop ", "--bridge-url", BRIDGE)


def test_a_given_key_is_stored_trimmed_as_the_api_reads_a_calls_key() -> None:
    """The API trims the key a call sends (`ApiKey <key>`); createclient stored a key
    given with white space around it (a line read from a file) as given, which then
    authenticated no call, and --if-missing added it again beside the first."""
    lines = createclient("shop", "--bridge-url", BRIDGE, "--secret-key", f" {NOVU_KEY}\n")
    again = createclient("shop", "--bridge-url", BRIDGE, "--if-missing", "--secret-key", NOVU_KEY)

    assert lines[-1] == again[-1] == NOVU_KEY
    assert selectors.client_by_api_key(key=NOVU_KEY).name == "shop"
    assert SecretKey.objects.get().prefix == NOVU_KEY[:8]
    client = client_with_key()[0]
    assert services.secret_key_create(client=client, key=f"{'k' * 16}\t")[1] == "k" * 16


def test_if_missing_finds_a_given_key_with_white_space_around_it_as_the_one_stored() -> None:
    """The key is looked up trimmed, as it is stored: a deploy script passing it again
    with a newline (read from a file) found no stored key, and the client's own key was
    then added a second time (an IntegrityError, a traceback) and printed untrimmed."""
    createclient("shop", "--bridge-url", BRIDGE, "--secret-key", NOVU_KEY)

    lines = createclient(
        "shop", "--bridge-url", BRIDGE, "--if-missing", "--secret-key", f" {NOVU_KEY}\n"
    )

    assert lines == ["Client 'shop' exists already.", NOVU_KEY]
    assert SecretKey.objects.get().prefix == NOVU_KEY[:8]


def test_if_missing_compares_the_bridge_given_trimmed_as_it_is_stored() -> None:
    """A --bridge-url read from a file (a newline after it) is the client's own bridge,
    as the created client stores it: no word that it differs."""
    createclient("shop", "--bridge-url", BRIDGE)
    err = StringIO()

    call_command("createclient", "shop", "--bridge-url", f" {BRIDGE}\n", "--if-missing", stderr=err)

    assert err.getvalue() == ""


def test_if_missing_names_the_bridges_it_compares_without_their_passwords() -> None:
    """Its word that the client's bridge is not the one given goes to a deploy's log, as
    the created client's line does: both URLs masked there, passwords and all."""
    createclient("shop", "--bridge-url", "https://ops:old-pass@bridge.test/api/novu")
    err = StringIO()

    call_command(
        "createclient",
        *("shop", "--bridge-url", " https://ops:new-pass@bridge.test/api/novu "),
        *("--if-missing",),
        stdout=StringIO(),
        stderr=err,
    )

    assert (
        "Its bridge is https://ops:***@bridge.test/api/novu, not the --bridge-url given "
        "(https://ops:***@bridge.test/api/novu)"
    ) in err.getvalue()
    assert "pass" not in err.getvalue()
