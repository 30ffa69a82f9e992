"""The OpenAPI schema at /v1/openapi.json describes every route of the API."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, resolve

HTTP_METHODS = ("get", "post", "put", "patch", "delete")
# Operations whose view reads a body besides POST, PUT and PATCH (novu-py's unsubscribe).
DELETE_WITH_BODY = {"/v2/topics/{key}/subscriptions"}


def api_routes() -> dict[str, set[str]]:
    """`{"/v1/topics/{key}": {"get", "patch", "delete"}}` for every /v1 and /v2 URL pattern."""
    routes: dict[str, set[str]] = {}

    def walk(patterns: list[Any], prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern) and re.match(r"v[12]/", route):
                view = getattr(pattern.callback, "cls", None)
                if view is None or route == "v1/openapi.json":
                    continue
                path = "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
                routes[path] = {m for m in HTTP_METHODS if hasattr(view, m)}

    walk(get_resolver().url_patterns, "")
    return routes


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    from django.test import Client

    response = Client().get("/v1/openapi.json")  # no API key: the schema is public
    assert response.status_code == 200
    return response.json()


def test_every_route_and_method_is_described(openapi: dict[str, Any]) -> None:
    routes = api_routes()
    assert len(routes) > 20  # the walk found the API, not just a few stray routes
    described = {path: set(ops) for path, ops in openapi["paths"].items()}
    assert described == routes


def test_every_documented_operation_reaches_a_view_that_answers_it(
    openapi: dict[str, Any],
) -> None:
    """Each path of the schema, its parameters filled in, is routed to the pattern it
    documents, and that view answers the method. The walk above compares each pattern
    with its own view, and so misses a pattern before it that takes the same URL (a
    `{subscriber_id}` taking /v1/subscribers/bulk): the schema then lists an operation
    no request reaches, answered 405 or by another view."""
    phantom = []
    for path, operations in openapi["paths"].items():
        url = re.sub(r"\{\w+\}", "x1", path)
        match = resolve(url)
        view = match.func.view_class
        allowed = match.func.view_initkwargs.get("http_method_names", view.http_method_names)
        routed = "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", match.route)
        phantom += [
            f"{method.upper()} {path} ({view.__name__} of {routed})"
            for method in operations
            if routed != path or method not in allowed or not hasattr(view, method)
        ]
    assert phantom == []


def test_operations_have_ids_tags_bodies_and_documented_answers(openapi: dict[str, Any]) -> None:
    ids = []
    for path, operations in openapi["paths"].items():
        for method, op in operations.items():
            where = f"{method.upper()} {path}"
            ids.append(op["operationId"])
            assert op.get("tags") and op.get("summary"), where
            reads_body = method in ("post", "put", "patch") or (
                method == "delete" and path in DELETE_WITH_BODY
            )
            assert ("requestBody" in op) == reads_body, where
            if reads_body:
                assert op["requestBody"]["content"]["application/json"]["schema"], where
            success = [code for code in op["responses"] if code.startswith("2")]
            assert success, where
            for code in set(success) - {"204"}:  # No Content: Novu's mark-all answers
                assert op["responses"][code]["content"]["application/json"]["schema"], where
            for code in ("401", "403"):
                error = op["responses"][code]["content"]["application/json"]["schema"]
                assert error == {"$ref": "#/components/schemas/Error"}, where
            assert op["security"] == [{"ApiKey": []}], where
    assert len(ids) == len(set(ids))


def test_documented_status_codes_match_the_views(openapi: dict[str, Any]) -> None:
    def codes(path: str, method: str) -> set[str]:
        return set(openapi["paths"][path][method]["responses"])

    assert {"201", "400", "413", "429"} <= codes("/v1/events/trigger", "post")
    # A workflow the bridge does not define: Novu's 422 workflow_not_found.
    for trigger in ("/v1/events/trigger", "/v1/events/trigger/broadcast"):
        assert "422" in codes(trigger, "post"), trigger
    assert "200" in codes("/v1/events/trigger/{transaction_id}", "delete")
    assert {"200", "404"} <= codes("/v1/events/trigger/{transaction_id}", "get")
    assert {"201", "409"} <= codes("/v2/subscribers", "post")
    assert {"200", "201", "409"} <= codes("/v2/topics", "post")
    assert "200" in codes("/v2/subscribers/{subscriber_id}", "delete")
    cancel = openapi["paths"]["/v1/events/trigger/{transaction_id}"]["delete"]
    ref = cancel["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    body = openapi["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert body["properties"]["data"]["type"] == "boolean"


def test_the_inbox_and_messages_document_the_answers_novu_gives(openapi: dict[str, Any]) -> None:
    """As the views answer them: a subscriber not found is a 400 to the feed and the
    counts, a 404 to the message list; markAs answers the messages as GET /v1/messages
    does (novu-py reads both as one model); an inbox notification names its workflow."""
    paths, schemas = openapi["paths"], openapi["components"]["schemas"]
    inbox = "/v1/subscribers/{subscriber_id}/notifications"
    for counted in (
        f"{inbox}/feed",
        f"{inbox}/unseen",
        "/v2/subscribers/{subscriber_id}/notifications/count",
    ):
        responses = paths[counted]["get"]["responses"]
        assert "400" in responses and "404" not in responses, counted
    assert "404" in paths["/v1/messages"]["get"]["responses"]

    def schema(path: str, method: str, status: str) -> dict[str, Any]:
        ref = paths[path][method]["responses"][status]["content"]["application/json"]["schema"]
        return schemas[ref["$ref"].rsplit("/", 1)[1]]

    marked = schema("/v1/subscribers/{subscriber_id}/messages/markAs", "post", "201")
    listed = schema("/v1/messages", "get", "200")
    assert marked["properties"]["data"]["items"] == listed["properties"]["data"]["items"]
    page = schema("/v2/subscribers/{subscriber_id}/notifications", "get", "200")
    notification = schemas[page["properties"]["data"]["items"]["$ref"].rsplit("/", 1)[1]]
    workflow = schemas[notification["properties"]["workflow"]["$ref"].rsplit("/", 1)[1]]
    assert set(workflow["required"]) == {"id", "identifier", "name", "critical", "severity"}


def test_query_parameters_are_described(openapi: dict[str, Any]) -> None:
    def query(path: str) -> set[str]:
        params = openapi["paths"][path]["get"]["parameters"]
        return {p["name"] for p in params if p["in"] == "query"}

    assert {"limit", "after", "before", "email", "name"} <= query("/v2/subscribers")
    assert {"page", "limit", "subscriberId"} <= query("/v1/subscribers")
    # v1 lists page by page (as Novu's): v2's cursor was advertised there and ignored.
    v1_subscribers = {"page", "limit", "subscriberId", "email", "phone", "name"}
    assert query("/v1/subscribers") == v1_subscribers
    assert query("/v1/topics") == {"page", "limit", "pageSize", "key", "name"}
    assert {"page", "limit", "transactionId", "status"} <= query("/v1/notifications")
    feed = query("/v1/subscribers/{subscriber_id}/notifications/feed")
    assert {"page", "limit", "seen", "read", "payload"} <= feed


@pytest.mark.django_db
def test_error_schema_matches_a_real_error(openapi: dict[str, Any], client: Any) -> None:
    error = openapi["components"]["schemas"]["Error"]
    body = client.post("/v1/events/trigger", {}, content_type="application/json").json()
    assert body["statusCode"] == 401
    assert set(error["required"]) <= set(body) <= set(error["properties"])


def off_its_schema(
    openapi: dict[str, Any], path: str, method: str, status: str, body: Any
) -> list[str]:
    """How `body`, an answer of `status` to `method` on `path`, departs from the schema
    the OpenAPI documents for it: what a client generated from it would refuse."""
    from jsonschema import Draft7Validator

    documented = openapi["paths"][path][method]["responses"][status]
    schema = documented["content"]["application/json"]["schema"]
    validator = Draft7Validator(schema | {"components": openapi["components"]})
    return [problem.message for problem in validator.iter_errors(body)]


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["post", "delete"])
def test_a_subscriptions_400_matches_its_documented_schema(
    openapi: dict[str, Any], method: str
) -> None:
    """A subscribe or an unsubscribe that could act on none of its ids answers 400 with
    an `errors` item per subscriber (`{subscriberId, code, message}`, as Novu's), which
    the schema documented as the field errors of a payload (`field` required): a client
    generated from norm's schema refused it."""
    from tests.factories import api_for, client_with_key

    _, key = client_with_key()
    api = api_for(key)
    api.post("/v2/topics", {"key": "news"}, format="json")
    answer = getattr(api, method)(
        "/v2/topics/news/subscriptions", {"subscriberIds": ["nobody"]}, format="json"
    )
    assert answer.status_code == 400
    path = "/v2/topics/{key}/subscriptions"
    assert off_its_schema(openapi, path, method, "400", answer.json()) == []


@pytest.mark.django_db
def test_a_422_matches_its_documented_schema(openapi: dict[str, Any]) -> None:
    """A body that fails its schema answers Novu's ValidationErrorDto, `errors` keyed by
    field, which a client generated from norm's schema must read as documented."""
    from tests.factories import api_for, client_with_key

    _, key = client_with_key()
    answer = api_for(key).post(
        "/v2/subscribers", {"subscriberId": "ann", "email": "ann@"}, format="json"
    )
    assert answer.status_code == 422
    assert off_its_schema(openapi, "/v2/subscribers", "post", "422", answer.json()) == []


def test_notifications_document_their_jobs_as_novu_py_reads_them(openapi: dict[str, Any]) -> None:
    """Each notification's `jobs`: the fields novu-py requires, and only values of the
    enums it checks (a providerId off Novu's list fails its whole response)."""
    from novu_py.models import (
        ActivityNotificationJobResponseDtoType,
        ExecutionDetailsSourceEnum,
        ExecutionDetailsStatusEnum,
        ProvidersIDEnum,
    )

    schemas = openapi["components"]["schemas"]
    jobs = schemas["Notification"]["properties"]["jobs"]
    assert jobs["items"]["$ref"] == "#/components/schemas/NotificationJob"
    job, detail = schemas["NotificationJob"], schemas["NotificationJobExecutionDetail"]
    required = {"_id", "type", "status", "providerId", "step", "executionDetails"}
    assert required <= set(job["required"])
    assert {"_id", "active", "filters", "_templateId"} <= set(
        schemas["NotificationJobStep"]["required"]
    )
    assert {"_id", "status", "detail", "isRetry", "isTest", "source"} <= set(detail["required"])

    def enum(schema: dict[str, Any], name: str) -> set[str]:
        field = schema["properties"][name]
        ref = field.get("$ref") or field["allOf"][0]["$ref"]  # allOf: read-only
        return set(schemas[ref.rsplit("/", 1)[1]]["enum"])

    assert enum(job, "type") <= {t.value for t in ActivityNotificationJobResponseDtoType}
    assert enum(job, "providerId") <= {p.value for p in ProvidersIDEnum}
    assert enum(detail, "status") <= {s.value for s in ExecutionDetailsStatusEnum}
    assert enum(detail, "source") <= {s.value for s in ExecutionDetailsSourceEnum}
    assert {"queued", "running", "completed", "failed", "delayed"} <= enum(job, "status")


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE", "TRACE"])
@pytest.mark.parametrize("path", ["/docs", "/v1/openapi.json"])
def test_the_public_docs_answer_any_method_without_a_500(path: str, method: str) -> None:
    """An OPTIONS of /docs, which anyone may send, was a 500: DRF describes the view, and
    the page's HTML renderer has no template for a description."""
    from django.test import Client

    response = Client(raise_request_exception=False).generic(method, path)

    assert response.status_code == (200 if method in ("GET", "HEAD") else 405), response.content


def test_the_servers_own_address_leads_to_the_docs(client: Any) -> None:
    """The address make run's banner gives ("norm is running on http://127.0.0.1:8000"):
    opened in a browser, it was a bare 404. A POST there is no redirect."""
    response = client.get("/")
    assert (response.status_code, response["Location"]) == (302, "/docs")
    assert client.get(response["Location"]).status_code == 200
    assert client.post("/").status_code == 405


def test_no_description_holds_an_angle_bracket_outside_code(openapi: dict[str, Any]) -> None:
    """Swagger UI (/docs) renders a description as Markdown and drops the HTML tags it
    finds: "by default tk_<topic key>:si_<subscriberId>" read "by default tk_:si_". Within
    a code span (`...`) the text is shown as written."""
    bare: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "description" and isinstance(value, str):
                    if "<" in re.sub(r"`[^`]*`", "", value):
                        bare.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(openapi)
    assert bare == []
