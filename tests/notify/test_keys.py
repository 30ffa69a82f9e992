from __future__ import annotations

import hashlib
from typing import Any

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.db import connection
from rest_framework.test import APIClient

from notify import crypto, selectors
from notify import services as notify_services
from notify.models import SecretKey
from tests.factories import ClientFactory, api_for, client_with_key
from workflows.bridge import BridgeError

pytestmark = pytest.mark.django_db


def test_key_is_never_stored_in_plain_text() -> None:
    client, key = client_with_key()
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {SecretKey._meta.db_table}")
        rows = cursor.fetchall()
    assert len(rows) == 1
    assert all(key not in str(value) for value in rows[0])
    secret = SecretKey.objects.get()
    assert secret.prefix == key[:10]
    assert secret.key_hash == hashlib.sha256(key.encode()).hexdigest()


def test_lookup_by_hash_finds_the_client() -> None:
    client, key = client_with_key()
    client_with_key()  # another client's key must not match
    assert selectors.client_by_api_key(key=key) == client
    assert selectors.client_by_api_key(key=key + "x") is None
    assert selectors.client_by_api_key(key=key[:10]) is None


def test_encrypted_copy_decrypts_to_the_key() -> None:
    client, key = client_with_key()
    secret = SecretKey.objects.get(client=client)
    assert secret.encrypted != key
    assert crypto.decrypt(secret.encrypted) == key
    assert selectors.signing_secrets(client_id=client.pk) == (key,)


def test_without_an_encryption_key_the_copy_is_encrypted_under_the_secret_key(
    settings: Any,
) -> None:
    """The key derived from SECRET_KEY, not a constant: another deployment's SECRET_KEY
    (or the development default) cannot read it, and rotating SECRET_KEY makes it
    unreadable, as norm.W001 warns."""
    settings.NORM_ENCRYPTION_KEY, settings.SECRET_KEY = "", "one-long-random-production-secret"
    client, key = client_with_key()
    encrypted = SecretKey.objects.get(client=client).encrypted
    assert crypto.decrypt(encrypted) == key

    settings.SECRET_KEY = "another-long-random-production-secret"
    with pytest.raises(InvalidToken):
        crypto.decrypt(encrypted)


# Stored by a release before this one, with NORM_ENCRYPTION_KEY blank and SECRET_KEY
# "one-long-random-production-secret": Fernet(urlsafe_b64(sha256(SECRET_KEY))).
EARLIER_TOKEN = (
    "gAAAAABrDPeTx_hieJK2x4smbbQh0tNPBvemWJi-z5e-JHT8I1cF7_PsdiWmXzkno3LiEvp8Si8oP0sp5YWiXtt63ZM7"
    "XU5OT9hEaKQEJ4SOOh9QKSxBpos="
)


def test_a_key_an_earlier_release_encrypted_under_the_secret_key_still_decrypts(
    settings: Any,
) -> None:
    """The key derived from SECRET_KEY is fixed by what deployments stored with it: derived
    otherwise, no stored key of a deployment without NORM_ENCRYPTION_KEY would decrypt
    after an upgrade, and every notification would fail (SigningKeyUnreadable)."""
    settings.NORM_ENCRYPTION_KEY, settings.SECRET_KEY = "", "one-long-random-production-secret"
    assert crypto.decrypt(EARLIER_TOKEN) == "nk_stored-by-an-earlier-release"


def test_several_keys_per_client_and_revoking_one_leaves_the_other() -> None:
    client = ClientFactory(secret_key=False)
    first, first_key = notify_services.secret_key_create(client=client)
    second, second_key = notify_services.secret_key_create(client=client)
    assert first_key != second_key
    assert selectors.client_by_api_key(key=first_key) == client
    assert selectors.client_by_api_key(key=second_key) == client
    # Bridge calls are signed with the newest live key, then the next (bridge.call).
    assert selectors.signing_secrets(client_id=client.pk) == (second_key, first_key)

    notify_services.secret_key_revoke(secret_key=second)

    assert selectors.client_by_api_key(key=second_key) is None
    assert selectors.client_by_api_key(key=first_key) == client
    assert selectors.signing_secrets(client_id=client.pk) == (first_key,)
    notify_services.secret_key_revoke(secret_key=first)
    assert selectors.signing_secrets(client_id=client.pk) == ()


def test_revoked_key_is_refused_by_the_api_and_the_other_still_authenticates() -> None:
    client = ClientFactory()
    old, old_key = notify_services.secret_key_create(client=client)
    _, new_key = notify_services.secret_key_create(client=client)
    notify_services.secret_key_revoke(secret_key=old)

    def status(key: str) -> int:
        api = api_for(key)
        # An empty body gets past authentication and fails validation: 400, not 401.
        return api.post("/v1/events/trigger", {}, format="json").status_code

    assert status(old_key) == 401
    assert status(new_key) == 400


def test_the_authorization_header_is_read_as_novus_clients_write_it() -> None:
    """`ApiKey <key>`: the scheme in any case and white space around the key taken; a
    header missing, another scheme, no key or an unknown one refused with a 401 that
    says which (novu-py shows the message)."""
    _, key = client_with_key()

    def answer(header: str | None) -> tuple[int, str, str]:
        api = APIClient()
        if header is not None:
            api.credentials(HTTP_AUTHORIZATION=header)
        # An empty body gets past authentication and fails validation: 400, not 401.
        body = api.post("/v1/events/trigger", {}, format="json").json()
        return body["statusCode"], body["code"], body["message"]

    assert answer(f"ApiKey {key}")[0] == 400
    assert answer(f"apikey {key}")[0] == 400
    assert answer(f"APIKEY  {key} ")[0] == 400
    missing = "Unauthorized: API key missing; send 'Authorization: ApiKey <key>'"
    assert answer(None) == (401, "not_authenticated", missing)
    wrong_form = (401, "authentication_failed", "Unauthorized: use 'Authorization: ApiKey <key>'")
    assert answer(f"Bearer {key}") == wrong_form
    assert answer(key) == wrong_form
    assert answer("ApiKey   ") == wrong_form
    unknown = (401, "authentication_failed", "Unauthorized: API key unknown or revoked")
    assert answer(f"ApiKey {key}x") == unknown


def test_revoking_twice_keeps_the_first_revocation_time() -> None:
    client = ClientFactory()
    secret, _ = notify_services.secret_key_create(client=client)
    revoked_at = notify_services.secret_key_revoke(secret_key=secret).revoked_at
    assert revoked_at is not None
    assert notify_services.secret_key_revoke(secret_key=secret).revoked_at == revoked_at


def test_generated_keys_are_distinct_and_prefixed() -> None:
    keys = {crypto.generate_key() for _ in range(50)}
    assert len(keys) == 50
    assert all(k.startswith(crypto.KEY_PREFIX) and len(k) > 40 for k in keys)


def test_the_echo_workers_signing_key_is_remembered_for_the_process_cache_seconds(
    settings: Any,
) -> None:
    """The echo worker signs every bridge call: it reads the key once per
    NORM_PROCESS_CACHE_SECONDS; a fresh read (and 0 seconds) sees a rotation at once."""
    client = ClientFactory(secret_key=False)
    _, first_key = notify_services.secret_key_create(client=client)
    assert selectors.signing_secrets(client_id=client.pk, cached=True) == (first_key,)
    _, second_key = notify_services.secret_key_create(client=client)

    settings.NORM_PROCESS_CACHE_SECONDS = 60
    assert selectors.signing_secrets(client_id=client.pk, cached=True) == (first_key,)
    both = (second_key, first_key)
    assert selectors.signing_secrets(client_id=client.pk) == both  # fresh, and kept
    assert selectors.signing_secrets(client_id=client.pk, cached=True) == both

    _, third_key = notify_services.secret_key_create(client=client)
    settings.NORM_PROCESS_CACHE_SECONDS = 0
    assert selectors.signing_secrets(client_id=client.pk, cached=True) == (third_key, *both)


def test_a_key_made_for_a_client_without_one_signs_at_once_where_the_key_is_remembered(
    settings: Any,
) -> None:
    """No key is not remembered: a client given its first key (or a new one after its
    last was revoked) would otherwise have each notification the echo worker signs in
    the next NORM_PROCESS_CACHE_SECONDS failed, as a client without a key is."""
    settings.NORM_PROCESS_CACHE_SECONDS = 60
    client = ClientFactory(secret_key=False)
    assert selectors.signing_secrets(client_id=client.pk, cached=True) == ()

    _, key = notify_services.secret_key_create(client=client)

    assert selectors.signing_secrets(client_id=client.pk, cached=True) == (key,)


def test_each_client_signs_with_its_own_key_not_the_newest_of_any_client() -> None:
    client, key = client_with_key()
    other, other_key = client_with_key()  # newer, of another client
    assert selectors.signing_secrets(client_id=client.pk) == (key,)
    assert selectors.signing_secrets(client_id=other.pk) == (other_key,)


def test_at_most_the_three_newest_live_keys_sign() -> None:
    """A refused signature costs one more bridge call per key: a client with many live
    keys is tried with its newest few only."""
    client = ClientFactory(secret_key=False)
    keys = [notify_services.secret_key_create(client=client)[1] for _ in range(4)]
    assert selectors.signing_secrets(client_id=client.pk) == tuple(reversed(keys))[:3]


def test_an_older_live_key_no_encryption_key_decrypts_leaves_the_newest_to_sign(
    settings: Any,
) -> None:
    """An older key is tried only when the bridge refuses the newest. Stored under an
    encryption key since lost, it failed every notification (SigningKeyUnreadable) that
    the newest, readable, signs: from the moment the new key SigningKeyUnreadable advises
    was created until the old one was revoked. The newest unreadable still fails them."""
    client = ClientFactory(secret_key=False)
    settings.NORM_ENCRYPTION_KEY = Fernet.generate_key().decode()  # lost below
    notify_services.secret_key_create(client=client)
    settings.NORM_ENCRYPTION_KEY = Fernet.generate_key().decode()
    _, new = notify_services.secret_key_create(client=client)

    assert selectors.signing_secrets(client_id=client.pk) == (new,)

    other = ClientFactory(secret_key=False)
    notify_services.secret_key_create(client=other)  # older, readable
    current = settings.NORM_ENCRYPTION_KEY
    settings.NORM_ENCRYPTION_KEY = Fernet.generate_key().decode()
    notify_services.secret_key_create(client=other)  # the newest, under a key lost
    settings.NORM_ENCRYPTION_KEY = current
    with pytest.raises(BridgeError, match="SigningKeyUnreadable"):
        selectors.signing_secrets(client_id=other.pk)
