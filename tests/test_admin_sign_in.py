"""Operators sign in through the portal's rate-limited sign-in, never around it.

The attack: guess a staff user's password through the admin's login form, which Django serves
without the sign-in's limits on failed attempts. The attacker posts to ``/admin/login/`` and
follows wherever that leads, as a script would; after the limit even the right password is
refused, until the limit's window has passed.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from tests.conftest import make_user

pytestmark = pytest.mark.django_db
EMAIL = "ops@example.com"
PASSWORD = "correct horse 42"
GUESSES = 40


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_superuser(username=EMAIL, email=EMAIL, password=PASSWORD)


def attempt(client: Client, url: str, password: str):
    """Post the credentials to ``url`` and, while the answer redirects elsewhere, post them
    there too, under the field names of whichever form it is (the admin's or the sign-in's)."""
    credentials = {"username": EMAIL, "login": EMAIL, "password": password}
    response = client.post(url, credentials)
    for _ in range(5):
        location = response.get("Location", "")
        if response.status_code != 302 or not location.startswith("/accounts/login/"):
            break
        response = client.post(location, credentials)
    return response


def refused(response) -> bool:
    return response.status_code == 429 or b"Too many failed login attempts" in response.content


def in_admin(client: Client) -> bool:
    response = client.get("/admin/")
    return response.status_code == 200 and b"Site administration" in response.content


@pytest.mark.parametrize("door", ["/admin/login/?next=/admin/", "/accounts/login/?next=/admin/"])
def test_guessing_a_staff_password_is_locked_out_and_the_right_one_waits(staff, door):
    attacker = Client()
    answers = [attempt(attacker, door, f"guess-{n}") for n in range(GUESSES)]

    assert not in_admin(attacker)
    assert refused(answers[-1]), answers[-1].status_code
    assert sum(refused(answer) for answer in answers) >= GUESSES - 10
    locked = attempt(attacker, door, PASSWORD)
    assert refused(locked)
    assert not in_admin(attacker)
    assert not in_admin(Client())  # nor anyone else, from the same address

    with time_machine.travel(timezone.now() + timedelta(minutes=6), tick=True):
        signed_in = attempt(attacker, door, PASSWORD)
        assert signed_in.status_code == 302 and signed_in["Location"] == "/admin/"
        assert in_admin(attacker)


def test_the_admins_login_form_signs_no_one_in(staff):
    client = Client()
    response = client.post("/admin/login/?next=/admin/", {"username": EMAIL, "password": PASSWORD})

    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert not in_admin(client)


def test_a_staff_user_signs_in_as_usual_and_reaches_the_admin(staff):
    client = Client()
    to_sign_in = client.get("/admin/", follow=True)
    assert to_sign_in.redirect_chain[-1][0].startswith("/accounts/login/")

    signed_in = client.post(to_sign_in.redirect_chain[-1][0], {"login": EMAIL, "password": PASSWORD}, follow=True)

    assert signed_in.redirect_chain[-1][0] == "/admin/"
    assert b"Site administration" in signed_in.content


def test_a_signed_in_user_who_is_not_staff_gets_no_admin(db):
    client = Client()
    client.force_login(make_user("someone@example.com"))

    assert client.get("/admin/login/").status_code == 403
    assert client.get("/admin/", follow=True).status_code == 403
    assert not in_admin(client)
