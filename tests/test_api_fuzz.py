"""The API against a fuzzer: requests generated from the portal's own OpenAPI document
(schemathesis), sent to the real application in-process, for every kind of session. No answer
may be a server error, and every answer must be one the document declares, in its shape."""

from __future__ import annotations

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import launch, make_user, signed_in

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def api_schema(transactional_db, daytona):
    return schemathesis.openapi.from_wsgi("/api/openapi.json", WSGIHandler())


schema = schemathesis.pytest.from_fixture("api_schema")


def _session(client) -> tuple[dict, dict]:
    cookies = {name: morsel.value for name, morsel in client.cookies.items()}
    return cookies, {"X-CSRFToken": cookies["csrftoken"]}


@pytest.fixture
def sessions(transactional_db, daytona):
    """Cookies and headers of: nobody; a new user, with and without the CSRF header; the owner
    of a running sandbox; another user, who has none."""
    owner = signed_in(make_user("owner@example.com"))
    assert launch(owner).status_code == 200
    newcomer_cookies, newcomer_csrf = _session(signed_in(make_user("new@example.com")))
    owner_cookies, owner_csrf = _session(owner)
    other_cookies, other_csrf = _session(signed_in(make_user("other@example.com")))
    return {
        "signed out": ({}, {}),
        "new user": (newcomer_cookies, newcomer_csrf),
        "new user without CSRF header": (newcomer_cookies, {}),
        "owner": (owner_cookies, owner_csrf),
        "owner without CSRF header": (owner_cookies, {}),
        "other user": (other_cookies, other_csrf),
    }


@schema.parametrize()
@settings(max_examples=25, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_is_declared_and_none_is_a_server_error(case, sessions):
    for cookies, headers in sessions.values():
        case.call_and_validate(headers=headers, cookies=cookies, checks=CHECKS)
