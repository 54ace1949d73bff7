"""A bug in the portal is an honest 500 with an id that names its logged traceback; never
disguised as an outage of the provider."""

import logging

import pytest

from sandboxes import services
from tests.conftest import CANARY_KEY, launch, signed_in

pytestmark = pytest.mark.django_db


def test_an_unexpected_exception_is_a_500_with_the_id_of_its_logged_traceback(daytona, owner, monkeypatch, caplog):
    client = signed_in(owner)
    assert launch(client).status_code == 200

    def bug(**kwargs):
        raise ZeroDivisionError("a bug in the status service")

    # The only way to make the portal fail as a bug does: the API's own handler is what is shown.
    monkeypatch.setattr(services, "sandbox_status", bug)
    with caplog.at_level(logging.ERROR, logger="sandboxes.api"):
        response = client.get("/api/sandbox")

    assert response.status_code == 500
    error = response.json()["error"]
    assert set(error) == {"code", "message", "id"}
    assert error["code"] == "internal"
    assert error["id"] in error["message"]
    assert "Retry-After" not in response
    [record] = [r for r in caplog.records if r.name == "sandboxes.api"]
    assert error["id"] in record.getMessage()
    assert record.exc_info and record.exc_info[0] is ZeroDivisionError
    assert "ZeroDivisionError" not in response.content.decode()
    assert CANARY_KEY not in response.content.decode()
