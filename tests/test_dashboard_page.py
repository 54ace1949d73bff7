"""Who gets the dashboard page (My sandbox), and who gets the landing page's link to it."""

import pytest
from django.test import Client

from sandboxes.models import Sandbox
from tests.conftest import signed_in

DASHBOARD = "/sandbox-portal/sandbox/"

pytestmark = pytest.mark.django_db


def sandbox_of(user, *, remote_id: str) -> Sandbox:
    return Sandbox.objects.create(
        user=user, provider="local", remote_name=f"joepro-{user.pk}", remote_id=remote_id, cpu=2, memory_gb=4, disk_gb=8
    )


def test_signed_out_visitors_are_sent_to_sign_in():
    response = Client().get(DASHBOARD)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/sandbox-portal/sandbox/")


def test_a_user_without_a_sandbox_is_sent_to_the_portal(owner):
    response = signed_in(owner).get(DASHBOARD)
    assert response.status_code == 302 and response["Location"] == "/sandbox-portal/"


def test_a_sandbox_never_made_remotely_is_sent_to_the_portal_too(owner):
    sandbox_of(owner, remote_id="")
    response = signed_in(owner).get(DASHBOARD)
    assert response.status_code == 302 and response["Location"] == "/sandbox-portal/"


def test_the_owner_gets_the_page_of_their_own_sandbox(owner, teammate):
    sandbox_of(owner, remote_id="remote-owner")
    sandbox_of(teammate, remote_id="remote-teammate")
    response = signed_in(owner).get(DASHBOARD)
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    page = response.content.decode()
    assert f"joepro-{owner.pk}" in page and f"joepro-{teammate.pk}" not in page


def test_the_landing_page_links_to_the_dashboard_only_for_a_user_with_a_sandbox(owner, teammate):
    sandbox_of(owner, remote_id="remote-owner")
    assert DASHBOARD in signed_in(owner).get("/sandbox-portal/").content.decode()
    assert DASHBOARD not in signed_in(teammate).get("/sandbox-portal/").content.decode()
    assert DASHBOARD not in Client().get("/sandbox-portal/").content.decode()
