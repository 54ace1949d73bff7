"""The template registry: versions, the shipped templates, and builds run once per version and
provider, in the background, with their log kept as it comes (real local builds and the fake
Daytona's snapshot API through the SDK)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from environments import builds
from environments.models import Template, TemplateBuild
from sandboxes.providers import get_provider
from tests.fake_daytona.timings import Timings
from tests.local_fixtures import local_root, local_settings  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db
State = TemplateBuild.State


def make_template(slug="tiny", **fields) -> Template:
    values = {"name": slug.title(), "base_image": "debian:bookworm", "programs": ["sh"]}
    return Template.objects.create(slug=slug, **{**values, **fields})


def queued_build(template: Template, provider: str) -> TemplateBuild:
    return TemplateBuild.objects.create(
        template=template, provider=provider, version=template.version, artifact=template.artifact_name
    )


# --- versions and the shipped templates ---------------------------------------------------------


def test_a_version_changes_with_what_is_built_and_with_nothing_else():
    template = make_template()
    first = template.version
    template.name, template.description, template.position = "Renamed", "Other words", 99
    template.start_command, template.ready_port, template.idle_minutes = "python -m http.server 3000", 8000, 30
    assert template.version == first
    for change in (
        {"base_image": "debian:trixie"},
        {"pip_packages": ["six"]},
        {"npm_packages": ["is-number@7.0.0"]},
        {"starter_files": {"a.txt": "hello"}},
        {"build_commands": ["true"]},
        {"memory_gb": 8},
    ):
        changed = Template(**{**{f.name: getattr(template, f.name) for f in Template._meta.fields}, **change})
        assert changed.version != first, change
    assert template.artifact_name == f"tiny-{first}"


def test_the_shipped_templates_are_there_with_todays_sandbox_as_the_default():
    shipped = {template.slug: template for template in Template.objects.all()}
    assert {"nodejs", "python", "fullstack", "blank"} <= set(shipped)
    defaults = [template for template in shipped.values() if template.is_default]
    assert [template.slug for template in defaults] == ["nodejs"]
    node = shipped["nodejs"]
    assert (node.base_image, node.cpu, node.memory_gb, node.disk_gb) == ("node:20-bookworm", 2, 4, 8)
    assert "psql" in shipped["fullstack"].programs and "postgresql-client" in shipped["fullstack"].apt_packages
    assert "app/main.py" in shipped["python"].starter_files and shipped["python"].ready_port == 3000


def test_builds_are_asked_for_once_per_version_and_provider(settings, django_capture_on_commit_callbacks):
    settings.DAYTONA_API_KEY = "a-key"
    Template.objects.exclude(slug="blank").update(enabled=False)
    with django_capture_on_commit_callbacks() as callbacks:
        first = builds.request_builds()
        again = builds.request_builds()
    assert sorted(build.provider for build in first) == ["daytona", "local"]
    assert again == []
    assert len(callbacks) == 1  # one enqueue of both builds, after commit
    blank = Template.objects.get(slug="blank")
    blank.apt_packages = [*blank.apt_packages, "jq"]
    blank.save()
    with django_capture_on_commit_callbacks():
        assert {build.version for build in builds.request_builds()} == {blank.version}


# --- local builds ---------------------------------------------------------------------------------


def test_a_local_build_prepares_the_version_once_and_keeps_its_log(local_settings):
    template = make_template(starter_files={"hello.txt": "hi"}, build_commands=["echo built-by-the-recipe"])
    build = queued_build(template, "local")

    done = builds.run_build(build.pk)

    assert done.state == State.READY, done.error
    assert "built-by-the-recipe" in done.log
    assert done.started_at and done.finished_at and done.attempts == 1
    assert get_provider("local").template_prepared(template.artifact_name)
    assert builds.offered("local") == [t for t in Template.objects.filter(enabled=True) if t == template]
    assert builds.run_build(build.pk) is None  # built: nothing to do again


@pytest.mark.django_db(transaction=True)
def test_a_build_claimed_by_two_workers_at_once_is_built_once(local_settings):
    template = make_template(build_commands=["sleep 0.5"])
    build = queued_build(template, "local")
    results = []

    def worker():
        try:
            results.append(builds.run_build(build.pk))
        finally:
            connections.close_all()  # this thread's own

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(result is None for result in results) == [False, True]
    assert TemplateBuild.objects.get(pk=build.pk).attempts == 1


def test_a_failed_build_is_not_offered_and_says_why_until_it_is_built_again(local_settings):
    template = make_template(programs=["sh", "no-such-program-here"])
    build = queued_build(template, "local")

    failed = builds.run_build(build.pk)

    assert failed.state == State.FAILED
    assert "no-such-program-here" in failed.error
    assert template not in builds.offered("local")
    assert builds.run_build(build.pk) is None  # stays failed: no rebuild by itself
    template.programs = ["sh"]  # the operator fixes the template: a new version
    template.save()
    assert builds.build_of(template, "local") is None
    assert builds.rebuild(failed) is True and TemplateBuild.objects.get(pk=build.pk).state == State.QUEUED


def test_a_build_whose_worker_died_is_built_again_by_the_next(local_settings):
    template = make_template()
    build = queued_build(template, "local")
    TemplateBuild.objects.filter(pk=build.pk).update(state=State.BUILDING, heartbeat_at=timezone.now())
    assert builds.run_build(build.pk) is None  # a live worker has it
    TemplateBuild.objects.filter(pk=build.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=11))
    assert builds.run_build(build.pk).state == State.READY


# --- Daytona builds: snapshots through the SDK ----------------------------------------------------


def test_a_daytona_build_makes_the_snapshot_and_streams_its_log(daytona):
    daytona.timings = Timings.instant().with_changes(snapshot_queue=0.3, snapshot_build=1.5)  # states to see
    template = make_template(slug="nodeapp", base_image="node:20-bookworm", npm_packages=["is-number@7.0.0"])
    build = queued_build(template, "daytona")

    done = builds.run_build(build.pk)

    assert done.state == State.READY, done.error
    snapshot = daytona.snapshots_by_name()[template.artifact_name]
    assert snapshot["state"] == "active"
    assert (snapshot["cpu"], snapshot["mem"], snapshot["disk"]) == (2, 4, 8)
    assert (
        "npm install --global --prefix /opt/template/node is-number@7.0.0" in snapshot["buildInfo"]["dockerfileContent"]
    )
    assert f"Creating snapshot {template.artifact_name} (building)" in done.log
    assert "FROM docker.io/library/node:20-bookworm" in done.log  # the build's own lines, streamed
    assert get_provider("daytona").template_prepared(template.artifact_name)
    get_provider("daytona").prepare_template(template.recipe(), on_log=lambda line: None)  # built: returns
    assert len(daytona.snapshots_by_name()) == 1


def test_a_failed_daytona_build_is_not_offered_and_gives_the_reason(daytona):
    daytona.fail_builds_containing("no-such-package-anywhere", "E: Unable to locate package no-such-package-anywhere")
    template = make_template(slug="broken", apt_packages=["no-such-package-anywhere"])
    build = queued_build(template, "daytona")

    failed = builds.run_build(build.pk)

    assert failed.state == State.FAILED
    assert "Unable to locate package no-such-package-anywhere" in failed.error
    assert template not in builds.offered("daytona")
    assert not get_provider("daytona").template_prepared(template.artifact_name)


def test_a_sandbox_from_a_built_template_uses_its_snapshot_and_builds_nothing(daytona):
    from sandboxes.providers.base import RemoteState, SandboxSpec

    template = make_template(slug="ready", base_image="python:3.12-bookworm")
    assert builds.run_build(queued_build(template, "daytona").pk).state == State.READY
    provider = get_provider("daytona")
    spec = SandboxSpec(
        name="templated-1",
        labels={"joepro-managed": "true"},
        cpu=2,
        memory_gb=4,
        disk_gb=8,
        template=template.artifact_name,
    )

    remote = provider.create(spec, wait_seconds=30)

    assert remote.state is RemoteState.STARTED
    record = daytona.store.peek(remote.id)
    assert record["snapshot"] == template.artifact_name
    assert not record.get("buildInfo")


# --- admin ----------------------------------------------------------------------------------------


def test_operators_see_each_build_and_its_log_grow_while_it_builds(console):
    template = make_template()
    build = queued_build(template, "local")
    TemplateBuild.objects.filter(pk=build.pk).update(state=State.BUILDING, log="$ step one\n<b>output</b>\n")

    page = console.get(f"/admin/environments/templatebuild/{build.pk}/change/").content.decode()
    assert '<meta http-equiv="refresh" content="3">' in page  # reloads while it builds
    assert "$ step one\n&lt;b&gt;output&lt;/b&gt;" in page  # the log as written, escaped

    TemplateBuild.objects.filter(pk=build.pk).update(state=State.FAILED, error="This machine lacks psql")
    page = console.get(f"/admin/environments/templatebuild/{build.pk}/change/").content.decode()
    assert 'http-equiv="refresh"' not in page and "This machine lacks psql" in page
    listing = console.get("/admin/environments/template/").content.decode()
    assert "local: failed" in listing


def test_a_failed_build_is_built_again_from_admin_and_only_a_failed_one(console, django_capture_on_commit_callbacks):
    template = make_template()
    failed, ready = queued_build(template, "local"), queued_build(template, "daytona")
    TemplateBuild.objects.filter(pk=failed.pk).update(state=State.FAILED, error="boom")
    TemplateBuild.objects.filter(pk=ready.pk).update(state=State.READY)

    with django_capture_on_commit_callbacks() as callbacks:
        response = console.post(
            "/admin/environments/templatebuild/",
            {"action": "build_again", "_selected_action": [failed.pk, ready.pk]},
            follow=True,
        )

    assert "1 build(s) queued again" in response.content.decode()
    assert TemplateBuild.objects.get(pk=failed.pk).state == State.QUEUED
    assert TemplateBuild.objects.get(pk=ready.pk).state == State.READY
    assert len(callbacks) == 1


def test_saving_a_changed_template_in_admin_builds_its_new_version(console, django_capture_on_commit_callbacks):
    python = Template.objects.get(slug="python")
    form = {
        "name": python.name,
        "description": python.description,
        "position": python.position,
        "is_default": "on",
        "enabled": "on",
        "base_image": python.base_image,
        "apt_packages": '["jq"]',
        "programs": '["python3"]',
        "pip_packages": "[]",
        "npm_packages": "[]",
        "build_commands": "[]",
        "starter_files": "{}",
        "cpu": 2,
        "memory_gb": 4,
        "disk_gb": 8,
        "start_command": "",
        "ready_port": 3000,
        "idle_minutes": "",
        "builds-TOTAL_FORMS": 0,
        "builds-INITIAL_FORMS": 0,
    }
    with django_capture_on_commit_callbacks() as callbacks:
        response = console.post(f"/admin/environments/template/{python.pk}/change/", form, follow=True)

    assert response.status_code == 200 and "is being built" in response.content.decode()
    python.refresh_from_db()
    assert builds.build_of(python, "local").state == State.QUEUED and len(callbacks) == 1
    assert list(Template.objects.filter(is_default=True)) == [python]  # the one default moved
