"""A workflow's step controls edited in the admin: stored only as the bridge can take
them, keyed by a step it declared and each value valid for that step's schema."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.factories import BridgeWorkflowFactory

pytestmark = pytest.mark.django_db

SCHEMA = {
    "type": "object",
    "properties": {"subject": {"type": "string"}},
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("controls", "error"),
    [
        ('{"mial": {"subject": "Hi"}}', "&#x27;mial&#x27; is not a step of this workflow."),
        ('["mail"]', "Use an object"),
        ('{"mail": "Hi"}', "The controls of &#x27;mail&#x27; must be an object."),
        (
            '{"mail": {"subject": 5}}',
            "&#x27;mail&#x27;: subject: 5 is not of type &#x27;string&#x27;",
        ),
    ],
    ids=["undeclared step", "not an object", "step not an object", "against its schema"],
)
def test_controls_the_bridge_cannot_take_are_the_forms_error(
    admin_client, controls: str, error: str
) -> None:
    """A control typed under a step id the bridge does not declare was stored and never
    sent to any step: the operator saw it saved, and the message went out without it."""
    mail = {"stepId": "mail", "type": "email", "controlSchema": SCHEMA}
    workflow = BridgeWorkflowFactory(steps=[mail], controls={"mail": {"subject": "Old"}})
    url = reverse("admin:notify_bridgeworkflow_change", args=[workflow.pk])

    response = admin_client.post(url, {"controls": controls})

    assert response.status_code == 200  # the form again, with its error
    assert error in response.content.decode()
    workflow.refresh_from_db()
    assert workflow.controls == {"mail": {"subject": "Old"}}

    saved = admin_client.post(url, {"controls": '{"mail": {"subject": "New"}}'})
    assert saved.status_code == 302
    workflow.refresh_from_db()
    assert workflow.controls == {"mail": {"subject": "New"}}


def test_only_the_controls_are_offered_for_editing(admin_client) -> None:
    """The rest is the bridge's, written by discover, and the save writes only the
    controls: a field offered beside them was an edit the page dropped without a word."""
    workflow = BridgeWorkflowFactory(workflow_id="wf-signup", name="Signup")
    url = reverse("admin:notify_bridgeworkflow_change", args=[workflow.pk])

    form = admin_client.get(url).context["adminform"].form

    assert list(form.fields) == ["controls"]
