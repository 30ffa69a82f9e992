from __future__ import annotations

import uuid
from typing import Any

import factory
import httpx
import requests
from django.test.client import ClientHandler
from django.utils import timezone
from novu_py import Novu
from novu_py.utils import BackoffStrategy, RetryConfig
from rest_framework.test import APIClient

from messaging.models import Message
from notify import services as notify_services
from notify.models import BridgeWorkflow, Client, TriggerEvent
from subscribers.models import Subscriber
from workflows.models import Notification, Step

BRIDGE_URL = "http://bridge.test/bridge"


class ClientFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Client
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"client-{n}")
    bridge_url = BRIDGE_URL

    @factory.post_generation
    def secret_key(client: Client, create: bool, extracted: object, **kwargs: object) -> None:
        # A client has a key from its creation (createclient): norm signs every bridge
        # call with it, and calls no bridge for one without. `secret_key=False`: none.
        if create and extracted is not False:
            notify_services.secret_key_create(client=client)


def client_with_key(**kwargs: object) -> tuple[Client, str]:
    """A client and its plain secret key (stored only hashed and encrypted)."""
    client = ClientFactory(secret_key=False, **kwargs)
    _, key = notify_services.secret_key_create(client=client)
    return client, key


def api_for(key: str) -> APIClient:
    """An API client that authenticates with `key`, as Novu's SDKs do."""
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"ApiKey {key}")
    return api


def _in_process(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """norm as a WSGI app in this thread, in the test's transaction (Django's test
    client's handler, which leaves the connection open between requests)."""
    response = ClientHandler()(environ)
    start_response(f"{response.status_code} {response.reason_phrase}", list(response.items()))
    return [response.content]


# Novu makes an async client when given none, and each loads the system's certificates:
# 0.05 s a test. The tests call norm synchronously only; this one is never used.
_UNUSED_ASYNC_CLIENT = httpx.AsyncClient(transport=httpx.MockTransport(lambda request: None))


def novu_py_for(key: str) -> Novu:
    """novu-py itself, authenticating with `key`, talking to norm in process; it does
    not retry (it retries a 409 or a 5xx for up to an hour by default)."""
    return Novu(
        secret_key=key,
        server_url="http://testserver",
        client=httpx.Client(transport=httpx.WSGITransport(app=_in_process)),
        async_client=_UNUSED_ASYNC_CLIENT,
        retry_config=RetryConfig("none", BackoffStrategy(1, 1, 1, 1), False),
    )


class _InProcessAdapter(requests.adapters.BaseAdapter):
    """requests' transport to norm in process, through httpx's WSGI transport."""

    def __init__(self) -> None:
        super().__init__()
        self._http = httpx.Client(transport=httpx.WSGITransport(app=_in_process))

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        answer = self._http.request(
            request.method or "GET",
            request.url or "",
            headers=dict(request.headers),
            content=request.body,
        )
        response = requests.Response()
        response.status_code, response.reason = answer.status_code, answer.reason_phrase
        response.headers = requests.structures.CaseInsensitiveDict(answer.headers)
        response._content = answer.content
        response.url, response.request = request.url or "", request
        return response

    def close(self) -> None:
        self._http.close()


# Loopback, which tests may call (conftest's guard): the session's adapter calls norm in
# process, and no request leaves it.
NOVU_114_URL = "http://127.0.0.1"


def novu_114_session() -> requests.Session:
    """A session for novu 1.14's Api classes (`SubscriberApi(NOVU_114_URL, key,
    session=...)`): the client itself, talking to norm in process."""
    session = requests.Session()
    session.mount("http://", _InProcessAdapter())
    return session


class BridgeWorkflowFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = BridgeWorkflow

    client = factory.SubFactory(ClientFactory)
    bridge_url = factory.LazyAttribute(lambda o: o.client.bridge_url)
    workflow_id = "welcome"
    discovered_at = factory.LazyFunction(timezone.now)


class SubscriberFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Subscriber

    client = factory.SubFactory(ClientFactory)
    subscriber_id = factory.Sequence(lambda n: f"user-{n}")


class TriggerEventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TriggerEvent

    client = factory.SubFactory(ClientFactory)
    workflow_id = "welcome"
    transaction_id = factory.LazyFunction(lambda: str(uuid.uuid4()))
    mode = TriggerEvent.Mode.MULTICAST
    to = factory.LazyFunction(lambda: ["user-a"])
    resource = factory.LazyAttribute(lambda o: o.client.bridge_url)


class NotificationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Notification

    trigger_event = factory.SubFactory(
        TriggerEventFactory, payload=factory.LazyFunction(lambda: {"name": "Ann"})
    )
    client = factory.LazyAttribute(lambda o: o.trigger_event.client)
    subscriber = factory.SubFactory(SubscriberFactory, client=factory.SelfAttribute("..client"))
    workflow_id = factory.LazyAttribute(lambda o: o.trigger_event.workflow_id)
    resource = factory.LazyAttribute(lambda o: o.trigger_event.resource)


class StepFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Step

    notification = factory.SubFactory(NotificationFactory, status=Notification.Status.RUNNING)
    step_id = factory.Sequence(lambda n: f"step-{n}")
    type = "email"
    position = factory.Sequence(lambda n: n)
    outputs = factory.LazyFunction(lambda: {"subject": "Hi", "body": "Hello"})
    due_at = factory.LazyFunction(timezone.now)


class MessageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Message

    step = factory.SubFactory(StepFactory, type="in_app")
    client = factory.LazyAttribute(lambda o: o.step.notification.client)
    subscriber = factory.LazyAttribute(lambda o: o.step.notification.subscriber)
    channel = factory.LazyAttribute(lambda o: o.step.type)
    provider = "inbox"
    status = Message.Status.SENT


class BridgeSyncFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "notify.BridgeSync"

    client = factory.SubFactory(ClientFactory)
    bridge_url = factory.LazyAttribute(lambda o: o.client.bridge_url)
    synced_at = factory.LazyFunction(timezone.now)
    flavour = "novu"
