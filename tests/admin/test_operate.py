"""Who may act on the pipeline's rows from the admin: the retry and cancel actions take
the permission to change them, and no one edits a row by hand."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from tests.factories import (
    MessageFactory,
    NotificationFactory,
    StepFactory,
    TriggerEventFactory,
)
from workflows.models import Notification, Step

pytestmark = pytest.mark.django_db

NOTIFICATIONS = "admin:workflows_notification_changelist"
TRIGGERS = "admin:notify_triggerevent_changelist"


def _staff(django_user_model, *codenames: str):
    user = django_user_model.objects.create_user("operator", password="x", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def test_a_user_who_may_only_view_notifications_cannot_retry_or_cancel_them(
    client, django_user_model
) -> None:
    """A retry sends a failed notification's messages again, a cancel stops one underway:
    viewing the list is no right to either."""
    viewer = _staff(django_user_model, "view_notification")
    client.force_login(viewer)
    failed = NotificationFactory(status=Notification.Status.FAILED)
    StepFactory(notification=failed, status=Step.Status.FAILED)
    running = NotificationFactory(status=Notification.Status.RUNNING)

    page = client.get(reverse(NOTIFICATIONS)).content.decode()
    assert 'value="retry"' not in page and 'value="cancel"' not in page
    for action, notification in (("retry", failed), ("cancel", running)):
        client.post(
            reverse(NOTIFICATIONS), {"action": action, "_selected_action": [str(notification.pk)]}
        )
    failed.refresh_from_db()
    running.refresh_from_db()
    assert failed.status == Notification.Status.FAILED
    assert running.status == Notification.Status.RUNNING

    viewer.user_permissions.add(Permission.objects.get(codename="change_notification"))
    client.post(reverse(NOTIFICATIONS), {"action": "cancel", "_selected_action": [str(running.pk)]})
    running.refresh_from_db()
    assert running.status == Notification.Status.CANCELED


def test_a_user_who_may_only_view_triggers_cannot_cancel_one(client, django_user_model) -> None:
    viewer = _staff(django_user_model, "view_triggerevent")
    client.force_login(viewer)
    event = TriggerEventFactory()
    cancel = {"action": "cancel", "_selected_action": [str(event.pk)]}

    assert 'value="cancel"' not in client.get(reverse(TRIGGERS)).content.decode()
    client.post(reverse(TRIGGERS), cancel)
    event.refresh_from_db()
    assert event.canceled_at is None

    viewer.user_permissions.add(Permission.objects.get(codename="change_triggerevent"))
    client.post(reverse(TRIGGERS), cancel)
    event.refresh_from_db()
    assert event.canceled_at is not None


def test_no_pipeline_row_is_edited_by_hand(admin_client) -> None:
    """A step set back to scheduled by hand would be sent again; a trigger's fields
    edited, its fan-out and its API's answers disagree. Not even a superuser edits one."""
    step = StepFactory(status=Step.Status.COMPLETED, attempts=1)
    rows = (step, step.notification, MessageFactory(), TriggerEventFactory())
    for row in rows:
        meta = row._meta
        url = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[row.pk])
        assert 'name="_save"' not in admin_client.get(url).content.decode(), meta.model_name
        edited = {"status": "scheduled", "attempts": "0", "workflow_id": "edited"}
        assert admin_client.post(url, edited).status_code == 403, meta.model_name
    step.refresh_from_db()
    assert step.status == Step.Status.COMPLETED and step.attempts == 1
