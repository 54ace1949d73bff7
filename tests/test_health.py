"""``/healthz`` and ``/readyz``: up is up whatever the Host and the HTTPS settings say; ready
names what is down, in fixed words that never carry a URL, a password or a key. Run in-process
and against the real server command, with the healthcheck of ``docker-compose.yml``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from sandboxes.providers import reset_providers
from sandboxes.services import configuration
from tests.conftest import CANARY_KEY
from tests.serve_fixtures import bin_serve, free_port

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent
CANARY_PASSWORD = "canary-pass-81c4"
CHECKS = {"database", "redis", "broker", "provider"}


@pytest.fixture
def local_provider(settings):
    settings.SANDBOX_PROVIDER = "local"
    reset_providers()
    yield
    reset_providers()


def readyz(**headers):
    response = Client().get("/readyz", **headers)
    assert response["Content-Type"] == "application/json"
    assert response["Cache-Control"] == "no-store"
    return response


def down(response) -> set[str]:
    return {name for name, check in response.json()["checks"].items() if not check["ok"]}


# --- healthz ----------------------------------------------------------------------------------


def test_healthz_answers_any_host_over_plain_http(settings):
    settings.SECURE_SSL_REDIRECT = True
    client = Client()

    response = client.get("/healthz", HTTP_HOST="web:8000")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert client.head("/healthz", HTTP_HOST="10.0.0.7").status_code == 200
    # The same request to a page meets the host check and the HTTPS redirect as before.
    assert client.get("/sandbox-portal/", HTTP_HOST="web:8000").status_code == 400
    assert client.get("/sandbox-portal/", HTTP_HOST="localhost").status_code == 301


def test_readyz_and_metrics_pass_the_host_check_and_the_redirect_too(settings, local_provider):
    settings.SECURE_SSL_REDIRECT = True
    settings.METRICS_TOKEN = "t"
    assert readyz(HTTP_HOST="web:8000").status_code == 200
    assert Client().get("/metrics", HTTP_HOST="web:8000", HTTP_AUTHORIZATION="Bearer t").status_code == 200
    assert Client().post("/healthz", HTTP_HOST="localhost").status_code != 200  # only GET and HEAD


# --- readyz -----------------------------------------------------------------------------------


def test_readyz_is_200_when_everything_answers(settings, local_provider):
    assert settings.REDIS_URL, "the tests run with Redis"

    response = readyz()

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == CHECKS
    assert all(check["ok"] and check["ms"] >= 0 for check in body["checks"].values())
    assert body["checks"]["provider"]["detail"] == "local"


def test_readyz_names_redis_and_the_broker_when_redis_is_down(settings, local_provider):
    port = free_port()
    url = f"redis://:{CANARY_PASSWORD}@127.0.0.1:{port}/0"
    settings.REDIS_URL = url
    settings.CELERY_BROKER_URL = url

    response = readyz()

    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert down(response) == {"redis", "broker"}
    assert response.json()["checks"]["redis"]["error"] == "not reachable"
    assert CANARY_PASSWORD not in response.content.decode()
    assert str(port) not in response.content.decode()


def test_without_redis_it_is_reported_as_not_configured_and_the_file_broker_is_checked(
    settings, local_provider, tmp_path
):
    settings.REDIS_URL = ""
    settings.CELERY_BROKER_URL = "filesystem://"
    folders = {"data_folder_in": tmp_path / "in", "data_folder_out": tmp_path / "in", "processed_folder": tmp_path}
    (tmp_path / "in").mkdir()
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {key: str(value) for key, value in folders.items()}

    response = readyz()

    assert response.status_code == 200
    checks = response.json()["checks"]
    assert (checks["redis"]["ok"], checks["redis"]["detail"]) == (True, "not configured")
    assert (checks["broker"]["ok"], checks["broker"]["detail"]) == (True, "filesystem")

    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {
        **settings.CELERY_BROKER_TRANSPORT_OPTIONS,
        "data_folder_in": str(tmp_path / "gone"),
    }
    response = readyz()
    assert response.status_code == 503
    assert down(response) == {"broker"}
    assert response.json()["checks"]["broker"]["error"] == "broker folder not writable"


def test_readyz_names_the_provider_when_daytona_cannot_be_reached(daytona, settings):
    port = free_port()
    settings.DAYTONA_API_URL = f"http://127.0.0.1:{port}/api"
    reset_providers()

    response = readyz()

    assert response.status_code == 503
    assert down(response) == {"provider"}
    assert response.json()["checks"]["provider"]["error"] == "daytona: not reachable"
    assert CANARY_KEY not in response.content.decode()
    assert str(port) not in response.content.decode()


def test_readyz_asks_daytona_once_for_many_checks(daytona, monkeypatch):
    monkeypatch.setattr(configuration, "REACHABLE_CACHE_SECONDS", 3600)
    daytona.fault("list", "status", status=503, times=50)

    first = readyz()
    asked = daytona.calls["list"]
    daytona.clear_faults()
    again = [readyz() for _ in range(5)]

    assert first.status_code == 503 and down(first) == {"provider"}
    assert asked >= 1 and daytona.calls["list"] == asked  # the answer is kept, a failure too
    assert all(response.status_code == 503 for response in again)
    assert CANARY_KEY not in first.content.decode()


def test_readyz_is_200_with_daytona_answering(daytona):
    response = readyz()
    assert response.status_code == 200
    assert response.json()["checks"]["provider"]["detail"] == "daytona"
    assert daytona.calls["list"] == 1


def test_a_check_that_hangs_is_reported_as_timed_out(daytona, monkeypatch):
    from joepro import health

    monkeypatch.setattr(health, "CHECK_TIMEOUT", 0.5)
    daytona.fault("list", "slow", seconds=2)

    response = readyz()

    assert response.status_code == 503
    assert response.json()["checks"]["provider"]["error"] == "timed out"


# --- the real server and docker-compose's healthcheck ------------------------------------------


def compose_healthcheck() -> list[str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    test = compose["services"]["web"]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python"
    assert "/readyz" in test[-1]
    return [sys.executable, *test[2:]]


@pytest.fixture
def serve():
    with ExitStack() as servers:
        yield lambda **environment: servers.enter_context(bin_serve(SANDBOX_PROVIDER="local", **environment)).url


def healthcheck_passes(url: str) -> bool:
    env = {**os.environ, "PORT": str(urlsplit(url).port), "HTTP_PROXY": "http://127.0.0.1:9"}
    return subprocess.run(compose_healthcheck(), env=env, capture_output=True, timeout=30).returncode == 0


RECORD = (
    "import sys; from usage.instruments import LAUNCH_FAILURES; "
    "LAUNCH_FAILURES.labels(code='capacity_reached').inc(int(sys.argv[1]))"
)


def record_in(directory: Path, count: int) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    subprocess.run([sys.executable, "-c", RECORD, str(count)], cwd=ROOT, env=env, check=True, timeout=60)


def test_the_compose_healthcheck_passes_against_bin_serve_which_merges_every_group(serve, tmp_path):
    record_in(tmp_path / "web", 2)  # left by the web group's previous run: bin/serve removes it
    record_in(tmp_path / "worker", 3)  # the worker group's, running
    url = serve(PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "web"), METRICS_TOKEN="serve-token")

    assert healthcheck_passes(url)
    health = httpx.get(f"{url}/healthz", headers={"Host": "web:8000"})
    assert (health.status_code, health.json()) == (200, {"status": "ok"})

    scrape = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer serve-token", "Host": "web:8000"})
    assert scrape.status_code == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(scrape.text)
        for sample in family.samples
    }
    assert samples[("joepro_launch_failures_total", (("code", "capacity_reached"),))] == 3
    checked = (("operation", "check_reachable"), ("outcome", "ok"), ("provider", "local"))
    assert samples[("joepro_provider_call_duration_seconds_count", checked)] >= 1  # the healthcheck's
    assert httpx.get(f"{url}/metrics", headers={"Host": "web:8000"}).status_code == 403


def test_readyz_of_bin_serve_names_the_database_and_redis_when_they_are_down(serve):
    database, redis = free_port(), free_port()
    url = serve(
        DATABASE_URL=f"postgres://joepro:{CANARY_PASSWORD}@127.0.0.1:{database}/joepro",
        REDIS_URL=f"redis://:{CANARY_PASSWORD}@127.0.0.1:{redis}/0",
        DATABASE_POOL_TIMEOUT="1",  # the pool gives up waiting for a connection within the check's time
    )

    response = httpx.get(f"{url}/readyz", timeout=30)

    assert response.status_code == 503
    body = response.json()
    assert {name for name, check in body["checks"].items() if not check["ok"]} == {"database", "redis", "broker"}
    assert body["checks"]["database"]["error"] == "not reachable"
    assert body["checks"]["provider"]["ok"] is True
    text = json.dumps(body)
    assert CANARY_PASSWORD not in text and str(database) not in text and str(redis) not in text
    assert not healthcheck_passes(url)
