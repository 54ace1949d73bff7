"""Launching from templates: the prebuilt version (a Daytona snapshot, a local toolchain), one
sandbox per (user, template) up to the operator's cap, reset to another template, and the
template's app started again after every start (real local sandboxes, the fake Daytona)."""

from __future__ import annotations

import time

import pytest
from django.contrib.auth import get_user_model

from environments import builds
from environments.models import Template, TemplateBuild
from sandboxes import services
from sandboxes.models import Sandbox
from sandboxes.providers import get_provider
from sandboxes.providers.base import ProviderError
from tests.conftest import csrf_headers, launch, signed_in
from tests.local_fixtures import local_root, local_settings, run  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db


def build(slug: str, provider: str) -> Template:
    template = Template.objects.get(slug=slug)
    row, _ = TemplateBuild.objects.get_or_create(
        template=template, provider=provider, version=template.version, defaults={"artifact": template.artifact_name}
    )
    done = builds.run_build(row.pk) or TemplateBuild.objects.get(pk=row.pk)
    assert done.state == TemplateBuild.State.READY, done.error
    return template


def app(client, template: str | None = None) -> dict:
    response = client.get("/api/sandbox/app", {"template": template} if template else {})
    assert response.status_code == 200, response.content
    return response.json()


def wait_for_app(client, template: str, seconds: float = 20) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        body = app(client, template)
        if body["ready"] or time.monotonic() > deadline:
            return body
        time.sleep(0.3)


# --- Daytona ----------------------------------------------------------------------------------------


def test_the_default_launches_from_its_snapshot_once_built_and_from_the_image_before(daytona, owner):
    client = signed_in(owner)
    first = launch(client)
    assert first.status_code == 200, first.content
    before = daytona.sandbox(first.json()["sandbox"]["id"])
    assert before.get("buildInfo")  # not built yet: the deployment's image, as before templates

    node = build("nodejs", "daytona")
    services.sandbox_delete(sandbox=Sandbox.objects.get(user=owner), actor_type="system", reason="test")
    again = launch(client)

    assert again.status_code == 200, again.content
    record = daytona.sandbox(again.json()["sandbox"]["id"])
    assert record["snapshot"] == node.artifact_name and not record.get("buildInfo")
    assert again.json()["sandbox"]["template"] == {"slug": "nodejs", "name": node.name}
    assert again.json()["sandbox"]["name"] == f"joepro-user-{owner.pk}"  # the name sandboxes always had


def test_a_template_not_built_is_refused_and_says_why(daytona, owner):
    response = launch(signed_in(owner), {"template": "python"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "template_unavailable"
    assert "being prepared" in response.json()["error"]["message"]
    assert launch(signed_in(owner), {"template": "no-such"}).status_code == 400
    assert not Sandbox.objects.filter(user=owner).exists()


def test_at_the_cap_another_template_is_refused_with_the_sandboxes_to_open_or_reset(daytona, owner, settings):
    build("python", "daytona")
    client = signed_in(owner)
    assert launch(client).status_code == 200

    refused = launch(client, {"template": "python"})

    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "sandbox_limit" and error["template"] == "python"
    assert error["sandboxes"] == [
        {"name": f"joepro-user-{owner.pk}", "template": "nodejs", "templateName": "Node.js / Next.js"}
    ]
    assert Sandbox.objects.filter(user=owner).count() == 1


def test_with_a_higher_cap_each_template_has_its_own_sandbox_terminal_and_token(daytona, owner, settings):
    settings.SANDBOX_MAX_PER_USER = 2
    build("python", "daytona")
    client = signed_in(owner)
    node, python = launch(client).json(), launch(client, {"template": "python"}).json()

    assert python["sandbox"]["name"] == f"joepro-user-{owner.pk}-python"
    assert node["sandbox"]["id"] != python["sandbox"]["id"]
    assert node["access"]["ssh"]["command"] != python["access"]["ssh"]["command"]
    assert client.get("/api/sandbox", {"template": "python"}).json()["sandbox"]["id"] == python["sandbox"]["id"]
    again = launch(client, {"template": "python"}).json()  # idempotent per (user, template)
    assert again["sandbox"]["id"] == python["sandbox"]["id"]
    build("fullstack", "daytona")
    assert launch(client, {"template": "fullstack"}).json()["error"]["code"] == "sandbox_limit"  # a third
    templates = client.get("/api/templates").json()
    offered = {t["slug"]: t["hasSandbox"] for t in templates["templates"]}
    assert offered == {"nodejs": True, "python": True, "fullstack": False}
    assert templates["maxSandboxes"] == 2


def test_a_sandbox_is_reset_to_another_template_only_after_its_name_is_typed(daytona, owner):
    python = build("python", "daytona")
    client = signed_in(owner)
    old = launch(client).json()["sandbox"]

    def reset(confirm):
        body = {"template": "nodejs", "newTemplate": "python", "confirm": confirm}
        return client.post("/api/sandbox/reset", data=body, content_type="application/json", **csrf_headers(client))

    wrong = reset("yes")
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "confirmation_mismatch"
    assert daytona.sandbox(old["id"])["state"] == "started"  # nothing deleted

    done = reset(old["name"])

    assert done.status_code == 200, done.content
    new = done.json()["sandbox"]
    assert new["template"]["slug"] == "python" and new["name"] == f"joepro-user-{owner.pk}-python"
    assert daytona.sandbox(new["id"])["snapshot"] == python.artifact_name
    assert (daytona.sandbox(old["id"]) or {}).get("state") in (None, "destroyed", "destroying")
    assert Sandbox.objects.get(user=owner).template == python


def test_the_start_command_runs_after_every_start_on_daytona(daytona, owner):
    build("python", "daytona")
    Template.objects.filter(slug="python").update(is_default=False)
    Template.objects.filter(slug="nodejs").update(is_default=False)
    Template.objects.filter(slug="python").update(is_default=True, start_command="echo the-app-ran")
    client = signed_in(owner)
    assert launch(client).status_code == 200
    assert ran(client, times=1)
    services.sandbox_stop_own(sandbox=Sandbox.objects.get(user=owner), user=owner)
    assert launch(client).status_code == 200
    assert ran(client, times=2)  # again after the resume, with the first run's log kept


def ran(client, *, times: int, seconds: float = 10) -> bool:
    """Whether the app's log shows ``times`` runs of the test's start command, each with its output."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        lines = app(client)["log"].splitlines()
        if lines.count("the-app-ran") == times and sum(line.startswith("--- started") for line in lines) == times:
            return True
        time.sleep(0.2)
    return False


# --- this machine -----------------------------------------------------------------------------------


def preview(provider, remote_id: str, port: int = 3000) -> bytes:
    stream = provider.open_relay(remote_id, port)
    try:
        stream.sendall(b"GET / HTTP/1.0\r\nHost: app\r\n\r\n")
        stream.settimeout(10)
        received = b""
        while chunk := stream.recv(65536):
            received += chunk
        return received
    finally:
        stream.close()


def test_the_python_template_installs_from_pypi_and_its_app_comes_back_after_a_resume(local_settings, owner):
    build("python", "local")
    client = signed_in(owner)
    Template.objects.update(is_default=False)
    Template.objects.filter(slug="python").update(is_default=True)
    body = launch(client).json()
    provider, remote_id = get_provider("local"), body["sandbox"]["id"]

    assert "/opt/template/python/bin/python" in run(provider, remote_id, "command -v python")
    installed = run(provider, remote_id, "python -m pip install --no-cache-dir iniconfig==2.0.0 2>&1", timeout=120)
    assert "Successfully installed iniconfig-2.0.0" in installed  # fetched from PyPI through the sandbox's network
    where = run(provider, remote_id, "python -c 'import iniconfig; print(iniconfig.__file__)'").strip()
    assert where.startswith("/home/sandbox/.local/")  # the user's own, beside the read-only toolchain
    ready = wait_for_app(client, "python")
    assert ready["ready"], ready
    assert b"Hello from your Python sandbox." in preview(provider, remote_id)

    services.sandbox_stop_own(sandbox=Sandbox.objects.get(user=owner), user=owner)
    with pytest.raises(ProviderError):  # stopped: nothing answers
        preview(provider, remote_id)
    assert launch(client).status_code == 200

    assert wait_for_app(client, "python")["ready"]
    assert b"Hello from your Python sandbox." in preview(provider, remote_id)  # nobody restarted it
    assert "--- started" in app(client, "python")["log"]


def test_the_node_template_installs_from_the_npm_registry(local_settings, owner):
    build("nodejs", "local")
    body = launch(signed_in(owner)).json()
    provider, remote_id = get_provider("local"), body["sandbox"]["id"]

    assert run(provider, remote_id, "command -v create-next-app").strip() == "/opt/template/node/bin/create-next-app"
    output = run(
        provider,
        remote_id,
        "mkdir -p proj && cd proj && npm init -y >/dev/null && npm install is-number@7.0.0 2>&1",
        timeout=120,
    )
    assert "added 1 package" in output
    assert run(provider, remote_id, "cd proj && node -p 'require(\"is-number\")(5)'").strip() == "true"


def test_two_users_sandboxes_of_one_template_are_their_own(daytona, owner):
    build("python", "daytona")
    other = get_user_model().objects.create_user(username="b@example.com", email="b@example.com", password="x" * 12)
    ids = {launch(signed_in(user), {"template": "python"}).json()["sandbox"]["id"] for user in (owner, other)}
    assert len(ids) == 2


@pytest.mark.django_db(transaction=True)
def test_sandboxes_from_before_templates_become_node_ones_with_their_names():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before = [("sandboxes", "0004_state_changes")]
    executor = MigrationExecutor(connection)
    leaves = executor.loader.graph.leaf_nodes()
    try:
        executor.migrate(before)
        old = executor.loader.project_state(before).apps
        user = old.get_model("auth", "User").objects.create(username="old", email="old@example.com")
        old.get_model("sandboxes", "Sandbox").objects.create(
            user_id=user.pk, provider="daytona", remote_name="joepro-user-old", cpu=2, memory_gb=4, disk_gb=8
        )
        MigrationExecutor(connection).migrate(leaves)
    finally:
        MigrationExecutor(connection).migrate(leaves)
    row = Sandbox.objects.get(remote_name="joepro-user-old")
    assert row.template.slug == "nodejs" and row.user.username == "old"
