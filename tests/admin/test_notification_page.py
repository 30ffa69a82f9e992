"""A notification's own page, and finding one by its subscriber's email."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from tests.factories import MessageFactory, NotificationFactory, StepFactory
from workflows.models import Notification

pytestmark = pytest.mark.django_db


def _notification(steps: int) -> Notification:
    notification = NotificationFactory()
    for position in range(steps):
        step = StepFactory(notification=notification, position=position, type="in_app")
        MessageFactory(step=step)
    return notification


def _queries(admin_client, notification: Notification) -> int:
    url = reverse("admin:workflows_notification_change", args=[notification.pk])
    with CaptureQueriesContext(connection) as queries:
        assert admin_client.get(url).status_code == 200
    return len(queries)


def test_a_notification_page_reads_its_steps_messages_with_the_steps(admin_client) -> None:
    """The steps' inline and the messages' table each show every step's message: read
    with the steps, as many queries for a workflow of six steps as for one of two."""
    short, long = _notification(2), _notification(6)
    _queries(admin_client, short)  # the first reads what the admin caches (content types)

    assert _queries(admin_client, long) == _queries(admin_client, short)


def test_a_notification_page_lists_the_message_of_each_of_its_steps(admin_client) -> None:
    """The messages' table is where an operator sees what a workflow sent, step by step:
    one message left out, a sent email read as never sent."""
    notification = NotificationFactory()
    for position, (step_id, recipient) in enumerate(
        [("in-app", "ann-inbox"), ("email", "ann@example.test")]
    ):
        step = StepFactory(notification=notification, position=position, step_id=step_id)
        MessageFactory(step=step, recipient=recipient)
    StepFactory(notification=notification, position=2, step_id="delay", type="delay")
    url = reverse("admin:workflows_notification_change", args=[notification.pk])

    page = admin_client.get(url).content.decode()

    table = page[page.index("<th>recipient</th>") :]
    assert "<td>in-app</td>" in table and "<td>ann-inbox</td>" in table
    assert "<td>email</td>" in table and "<td>ann@example.test</td>" in table
    assert "<td>delay</td>" not in table


def test_a_notification_is_found_by_its_subscribers_email_in_any_case(admin_client) -> None:
    """An operator pastes the address from a complaint, in whatever case it was typed."""
    wanted = NotificationFactory(subscriber__email="ann.lee@example.test")
    NotificationFactory(subscriber__email="bob@example.test")
    url = reverse("admin:workflows_notification_changelist")

    response = admin_client.get(url, {"q": "Ann.Lee@Example.TEST"})

    assert list(response.context["cl"].result_list) == [wanted]


def test_a_search_term_pasted_with_white_space_around_it_still_finds_its_row(
    admin_client,
) -> None:
    """A transactionId copied from a log line comes with its spaces or a tab: the search
    compares exactly, and found nothing."""
    wanted = NotificationFactory(trigger_event__transaction_id="tx-pasted")
    NotificationFactory()
    url = reverse("admin:workflows_notification_changelist")

    response = admin_client.get(url, {"q": " tx-pasted\t"})

    assert list(response.context["cl"].result_list) == [wanted]
