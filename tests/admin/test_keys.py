"""The secret keys' pages: what a staff user may do to a key, and what no page shows of it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from notify.models import SecretKey
from notify.selectors import client_by_api_key
from tests.factories import client_with_key

pytestmark = pytest.mark.django_db

KEYS = "admin:notify_secretkey_changelist"


def test_a_user_who_may_only_view_keys_cannot_revoke_one(client, django_user_model) -> None:
    """Revoking a key stops its client's API and bridge: viewing the list is no right to."""
    tenant, key = client_with_key()
    viewer = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_secretkey"))
    client.force_login(viewer)
    revoke = {"action": "revoke", "_selected_action": [str(tenant.secret_keys.get().pk)]}

    assert 'value="revoke"' not in client.get(reverse(KEYS)).content.decode()
    client.post(reverse(KEYS), revoke)
    assert client_by_api_key(key=key) is not None

    viewer.user_permissions.add(Permission.objects.get(codename="change_secretkey"))
    client.post(reverse(KEYS), revoke)
    assert client_by_api_key(key=key) is None


def test_a_keys_page_shows_neither_its_hash_nor_its_encrypted_copy(admin_client) -> None:
    """The encrypted copy is the key to whoever has the server's Fernet key, and the hash
    what a guess is checked against: the page shows the prefix, and takes neither."""
    tenant, key = client_with_key()
    row = tenant.secret_keys.get()

    html = admin_client.get(reverse("admin:notify_secretkey_change", args=[row.pk])).content
    page = html.decode()

    assert row.prefix in page
    assert row.key_hash not in page and row.encrypted not in page and key not in page
    assert 'name="key_hash"' not in page and 'name="encrypted"' not in page


def test_a_key_is_not_added_from_the_keys_list(admin_client) -> None:
    """A key is made by its client's action, which shows it once: a key added here would
    be whatever hash the form took, of a key nobody has."""
    assert admin_client.get(reverse("admin:notify_secretkey_add")).status_code == 403
    assert "notify/secretkey/add/" not in admin_client.get(reverse(KEYS)).content.decode()


def test_revoking_keys_counts_only_those_it_revoked(admin_client) -> None:
    """One revoked before keeps its time, and is not counted again."""
    old, _ = client_with_key()
    new, key = client_with_key()
    revoked_at = timezone.now() - timedelta(days=3)
    old.secret_keys.update(revoked_at=revoked_at)
    chosen = [str(k.pk) for k in SecretKey.objects.filter(client__in=[old, new])]

    response = admin_client.post(
        reverse(KEYS), {"action": "revoke", "_selected_action": chosen}, follow=True
    )

    assert "Revoked 1 key(s)" in response.content.decode()
    assert old.secret_keys.get().revoked_at == revoked_at
    assert client_by_api_key(key=key) is None
