"""Configuration fails loudly; production settings pass Django's deployment checks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

ROOT = Path(__file__).resolve().parent.parent


def test_daytona_without_a_key_is_a_check_error(settings):
    settings.SANDBOX_PROVIDER = "daytona"
    settings.DAYTONA_API_KEY = ""
    with pytest.raises(SystemCheckError, match="DAYTONA_API_KEY"):
        call_command("check")


def test_unknown_provider_is_a_check_error(settings):
    settings.SANDBOX_PROVIDER = "kubernetes"
    with pytest.raises(SystemCheckError, match="sandboxes.E001"):
        call_command("check")


def test_an_empty_webhook_signing_secret_is_a_check_error(settings):
    settings.DAYTONA_WEBHOOK_SECRET = "whsec_"
    with pytest.raises(SystemCheckError, match="sandboxes.E012"):
        call_command("check")
    settings.DAYTONA_WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    call_command("check")


@pytest.mark.parametrize("minutes", [1441, 0], ids=["over-daytonas-day", "zero"])
def test_access_lifetime_must_fit_daytonas_signed_links(settings, minutes):
    settings.SANDBOX_PROVIDER = "daytona"
    settings.DAYTONA_API_KEY = "a-key"
    settings.SANDBOX_SSH_TOKEN_MINUTES = minutes
    with pytest.raises(SystemCheckError, match="sandboxes.E009"):
        call_command("check")


def test_a_day_of_access_is_fine_on_daytona_and_longer_on_local_sandboxes(settings):
    settings.SANDBOX_PROVIDER = "daytona"
    settings.DAYTONA_API_KEY = "a-key"
    settings.SANDBOX_SSH_TOKEN_MINUTES = 1440
    call_command("check")
    settings.SANDBOX_PROVIDER = "local"
    settings.DAYTONA_API_KEY = ""
    settings.SANDBOX_SSH_TOKEN_MINUTES = 7 * 1440
    call_command("check")


def _manage(*args, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SANDBOX_", "DAYTONA_"))}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env={**base, **env}, capture_output=True, text=True
    )


def test_check_deploy_passes_with_production_settings():
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY="a-long-random-production-secret-key-0123456789-abcdefghijklmnop",
        DJANGO_ALLOWED_HOSTS="portal.example.com",
        DAYTONA_API_KEY="some-key",
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_default_without_a_key_runs_local_sandboxes():
    result = _manage("shell", "-c", "from django.conf import settings; print(settings.SANDBOX_PROVIDER)")
    assert result.stdout.strip().splitlines()[-1] == "local", result.stderr


def test_local_sandboxes_without_bubblewrap_is_a_check_error_with_the_fix():
    result = _manage("check", SANDBOX_BWRAP="/nonexistent/bwrap")
    assert result.returncode != 0
    assert "sandboxes.E005" in result.stderr
    assert "apt-get install bubblewrap" in result.stderr
    assert "DAYTONA_API_KEY" in result.stderr


@pytest.mark.django_db
def test_pages_send_a_csp_without_unsafe_inline_scripts(client):
    response = client.get("/sandbox-portal/")
    assert response.status_code == 200
    policy = response["Content-Security-Policy"]
    script_src = next(part for part in policy.split(";") if part.strip().startswith("script-src"))
    assert "'unsafe-inline'" not in script_src
    assert "default-src 'self'" in policy


@pytest.mark.django_db
def test_root_redirects_to_the_portal(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/sandbox-portal/"


@pytest.mark.django_db
def test_openapi_schema_and_docs_are_served(client):
    schema = client.get("/api/openapi.json").json()
    assert "/api/sandbox/create" in schema["paths"]
    assert "/api/sandbox" in schema["paths"]
    assert client.get("/api/docs").status_code == 200


def test_production_redirects_to_https_and_trusts_the_proxy_header():
    code = (
        "import django;django.setup();"
        "from django.test import Client;c=Client();"
        "r=c.get('/sandbox-portal/');print(r.status_code, r.get('Location'));"
        "r=c.get('/sandbox-portal/', headers={'X-Forwarded-Proto':'https'});print(r.status_code)"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SANDBOX_", "DAYTONA_"))}
    env = {
        **base,
        "DJANGO_SETTINGS_MODULE": "joepro.settings",
        "DJANGO_DEBUG": "false",
        "DJANGO_ALLOWED_HOSTS": "testserver",
        "DAYTONA_API_KEY": "k",
    }
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    lines = out.stdout.split("\n")
    assert lines[0].startswith("301 https://"), out.stderr
    assert lines[1] != "301"


def test_production_static_files_collect_with_hashed_names(tmp_path):
    result = _manage(
        "collectstatic",
        "--no-input",
        DJANGO_DEBUG="false",
        DJANGO_STATIC_ROOT=str(tmp_path),
        DAYTONA_API_KEY="some-key",
    )
    assert result.returncode == 0, result.stderr
    manifest = (tmp_path / "staticfiles.json").read_text()
    assert "js/launcher.js" in manifest and "css/portal.css" in manifest
