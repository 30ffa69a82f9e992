"""The add-a-member page's pickers (the admin's autocomplete), named with each choice's
client: read with the choices, not one client a choice."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from subscribers.models import Topic
from tests.factories import ClientFactory, SubscriberFactory

pytestmark = pytest.mark.django_db


def _choices(first: int, stop: int) -> None:
    for n in range(first, stop):
        client = ClientFactory(name=f"tenant-{n}")
        SubscriberFactory(client=client, subscriber_id=f"s{n:02}")
        Topic.objects.create(client=client, key=f"t{n:02}")


def _queries(admin_client, field: str) -> tuple[int, list[str]]:
    query = f"app_label=subscribers&model_name=topicsubscription&field_name={field}&term="
    with CaptureQueriesContext(connection) as queries:
        answer = admin_client.get(f"{reverse('admin:autocomplete')}?{query}")
    return len(queries), [r["text"] for r in answer.json()["results"]]


@pytest.mark.parametrize("field", ["subscriber", "topic"])
def test_a_members_picker_reads_its_choices_clients_with_them(admin_client, field: str) -> None:
    _choices(0, 3)
    _queries(admin_client, field)  # the first reads what the admin caches
    few, _ = _queries(admin_client, field)
    _choices(3, 18)

    many, texts = _queries(admin_client, field)

    assert len(texts) == 18 and "(tenant-17)" in " ".join(texts)
    assert many == few
