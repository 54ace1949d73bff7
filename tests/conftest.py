import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from sandboxes.providers import reset_providers
from tests.fake_daytona.fixtures import fake_daytona, fake_daytona_server  # noqa: F401

CANARY_KEY = "canary-daytona-key-5f1e"


@pytest.fixture
def daytona(settings, fake_daytona):  # noqa: F811
    """The portal configured for Daytona, talking to the HTTP fake through the real SDK."""
    settings.SANDBOX_PROVIDER = "daytona"
    settings.DAYTONA_API_KEY = CANARY_KEY
    settings.DAYTONA_API_URL = fake_daytona.api_url
    settings.DAYTONA_TARGET = "us"
    settings.SANDBOX_LAUNCH_RATE = "1000/m"
    reset_providers()
    yield fake_daytona
    reset_providers()


def make_user(email: str):
    return get_user_model().objects.create_user(username=email, email=email, password="correct horse 42")


@pytest.fixture
def owner(db):
    return make_user("owner@example.com")


@pytest.fixture
def teammate(db):
    return make_user("teammate@example.com")


@pytest.fixture
def outsider(db):
    return make_user("outsider@example.com")


@pytest.fixture
def operator(db):
    """A superuser of the operators' console."""
    return get_user_model().objects.create_superuser(
        username="ops@example.com", email="ops@example.com", password="correct horse 42"
    )


@pytest.fixture
def console(operator) -> Client:
    """The operators' console, signed in as :func:`operator` (CSRF checks off, as the admin's
    own forms carry the token)."""
    client = Client()
    client.force_login(operator)
    return client


def signed_in(user) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.get("/sandbox-portal/")  # sets the CSRF cookie, as the page does in a browser
    return client


def csrf_headers(client: Client) -> dict:
    return {"HTTP_X_CSRFTOKEN": client.cookies["csrftoken"].value}


def launch(client: Client, body: dict | None = None):
    return client.post("/api/sandbox/create", data=body or {}, content_type="application/json", **csrf_headers(client))


DATABASE_FIXTURES = ("db", "transactional_db", "live_server", "django_db_reset_sequences")


@pytest.fixture(autouse=True)
def shipped_templates(request):
    """The shipped templates in every test with a database, as a migrated deployment has them:
    a transactional test's flush removes what the migrations wrote."""
    wanted = [name for name in DATABASE_FIXTURES if name in request.fixturenames]
    marker = request.node.get_closest_marker("django_db")
    if not wanted and marker is None:
        return
    if wanted:
        request.getfixturevalue(wanted[0])
    from environments.models import Template
    from environments.shipped import TEMPLATES

    present = set(Template.objects.values_list("slug", flat=True))
    for fields in TEMPLATES:
        if fields["slug"] not in present:
            Template.objects.create(**fields)


@pytest.fixture(autouse=True)
def fresh_cache():
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(scope="session", autouse=True)
def test_server_settings():
    """Tests speak plain HTTP to the test servers (production redirects to HTTPS), and live
    servers serve static files by their plain names. Session-wide, because live servers read
    these settings once, when they start."""
    from django.conf import settings
    from django.test import override_settings

    storages = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    with override_settings(
        SECURE_SSL_REDIRECT=False, SESSION_COOKIE_SECURE=False, CSRF_COOKIE_SECURE=False, STORAGES=storages
    ):
        yield
