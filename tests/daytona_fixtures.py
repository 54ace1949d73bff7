"""Fixtures and helpers shared by the Daytona test modules, all on the HTTP fake of Daytona:
the provider (``test_daytona_provider_*``) and the SDK itself (``test_fake_daytona_*``)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import datetime

import pytest
from daytona import CreateSandboxFromSnapshotParams, Daytona, DaytonaConfig

from sandboxes.providers.base import SandboxSpec
from sandboxes.providers.daytona import DaytonaProvider
from tests.fake_daytona import FakeDaytona
from tests.fake_daytona.fixtures import FAKE_DAYTONA_API_KEY

MANAGED = {"joepro-managed": "true", "joepro-deployment": "test"}


@pytest.fixture
def provider(fake_daytona) -> DaytonaProvider:
    return DaytonaProvider(
        api_key=FAKE_DAYTONA_API_KEY,
        api_url=fake_daytona.api_url,
        target="us",
        http_timeout=1.0,
        max_retries=3,
        max_retry_wait=3.0,
    )


def make_spec(name: str = "joepro-u42", **overrides) -> SandboxSpec:
    fields = dict(
        name=name,
        labels={**MANAGED, "joepro-owner": "42"},
        cpu=2,
        memory_gb=4,
        disk_gb=8,
        image="ubuntu:22.04",
        auto_stop_minutes=150,
        env={"GREETING": "hello"},
    )
    fields.update(overrides)
    return SandboxSpec(**fields)


def started_sandbox(fake, name: str = "joepro-u42") -> str:
    return fake.add_sandbox(name=name, labels={**MANAGED, "joepro-owner": "42"}, state="started")["id"]


def elapsed_since(start: float) -> float:
    return time.monotonic() - start


# ----- the SDK on the fake -----------------------------------------------------------------


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def sdk(fake_daytona: FakeDaytona) -> Daytona:  # noqa: F811
    return Daytona(DaytonaConfig(api_key=FAKE_DAYTONA_API_KEY, api_url=fake_daytona.api_url, target="us"))


def _create(sdk: Daytona, name: str = "u-42", **kwargs):
    labels = kwargs.pop("labels", {"portal-user": "42"})
    return sdk.create(CreateSandboxFromSnapshotParams(name=name, labels=labels, **kwargs), timeout=10)


def _fetch(url: str, data: dict | None = None, headers: dict | None = None) -> tuple[int, str]:
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    try:
        with _DIRECT.open(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _parse(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
