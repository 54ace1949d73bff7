"""Sign-up and sign-in by email (django-allauth), back to the portal."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client, override_settings

pytestmark = pytest.mark.django_db
PASSWORD = "plum-orbit-canvas-42"


def sign_up(client: Client, email: str):
    return client.post(
        "/accounts/signup/", {"email": email, "password1": PASSWORD, "password2": PASSWORD}, follow=False
    )


def test_sign_up_by_email_lands_on_the_portal(client):
    response = sign_up(client, "new@example.com")
    assert response.status_code == 302
    assert response["Location"] == "/sandbox-portal/"
    user = get_user_model().objects.get(email="new@example.com")
    assert client.get("/api/sandbox").status_code == 404  # signed in, no sandbox yet
    assert user.is_active


def test_sign_in_by_email_and_back_to_the_portal(client):
    sign_up(client, "back@example.com")
    client.post("/accounts/logout/")
    assert client.get("/api/sandbox").status_code == 401

    response = client.post("/accounts/login/", {"login": "back@example.com", "password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == "/sandbox-portal/"
    assert client.get("/api/sandbox").status_code == 404


def test_sign_in_honours_next(client):
    sign_up(client, "next@example.com")
    client.post("/accounts/logout/")
    response = client.post(
        "/accounts/login/?next=/sandbox-portal/%3Flaunch%3D1", {"login": "next@example.com", "password": PASSWORD}
    )
    assert response["Location"] == "/sandbox-portal/?launch=1"


def test_no_username_field_on_sign_up(client):
    page = client.get("/accounts/signup/").content.decode()
    assert 'name="email"' in page
    assert 'name="username"' not in page


@override_settings(ACCOUNT_EMAIL_VERIFICATION="mandatory")
def test_mandatory_verification_holds_back_unverified_users(client, mailoutbox):
    response = sign_up(client, "verify@example.com")
    assert response.status_code == 302
    assert "confirm-email" in response["Location"]
    assert client.get("/api/sandbox").status_code == 401
    assert len(mailoutbox) == 1


def test_failed_sign_ins_are_rate_limited(client, settings):
    settings.ACCOUNT_RATE_LIMITS = {"login_failed": "3/m/ip,3/5m/key"}
    sign_up(client, "target@example.com")
    client.post("/accounts/logout/")
    statuses = [
        client.post("/accounts/login/", {"login": "target@example.com", "password": "wrong"}).status_code
        for _ in range(5)
    ]
    assert statuses[0] == 200
    blocked = client.post("/accounts/login/", {"login": "target@example.com", "password": PASSWORD})
    assert blocked.status_code == 429 or b"Too many" in blocked.content


def test_configured_social_providers_appear_on_sign_in(client, settings):
    settings.SOCIALACCOUNT_PROVIDERS = {
        **settings.SOCIALACCOUNT_PROVIDERS,
        "github": {"APPS": [{"client_id": "gh-id", "secret": "gh-secret"}], "SCOPE": ["user:email"]},
    }
    page = client.get("/accounts/login/").content.decode()
    assert "GitHub" in page
    assert "gh-secret" not in page


def test_unconfigured_social_providers_are_hidden(client):
    page = client.get("/accounts/login/").content.decode()
    assert "GitHub" not in page and "Google" not in page


def test_sign_ups_past_the_hourly_cap_are_refused_with_a_message(settings):
    from accounts.adapter import SIGNUPS_FULL_MESSAGE

    settings.ACCOUNT_SIGNUPS_PER_HOUR = 3
    settings.ACCOUNT_RATE_LIMITS = {"signup": "100/m/ip"}  # one address, as a crowd behind a NAT
    for i in range(3):
        assert sign_up(Client(), f"early{i}@example.com").status_code == 302

    refused = sign_up(Client(), "late@example.com")

    assert refused.status_code == 200
    assert SIGNUPS_FULL_MESSAGE in refused.content.decode().replace("&#x27;", "'")
    assert not get_user_model().objects.filter(email="late@example.com").exists()
    assert get_user_model().objects.count() == 3

    settings.ACCOUNT_SIGNUPS_PER_HOUR = 0  # no cap
    assert sign_up(Client(), "late@example.com").status_code == 302
