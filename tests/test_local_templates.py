"""Template versions on this machine: prepared once outside any sandbox (a toolchain built in a
build container, starter files), then mounted into every sandbox made from them; and short
scripts run in a sandbox without counting as its use. Real bubblewrap, real pip and npm."""

import json
import shutil
import threading
import time

import pytest

from sandboxes.providers.base import ErrorKind, ProviderError
from sandboxes.providers.local.isolation import INSIDE_PATH
from sandboxes.providers.templates import TemplateRecipe
from tests.local_fixtures import (  # noqa: F401 - fixtures
    local_root,
    make_provider,
    provider,
    read_until,
    sandbox,
    spec,
)

NPM_CLI = "cowsay@1.6.0"


def recipe(name: str, **fields) -> TemplateRecipe:
    return TemplateRecipe(name=name, base_image="debian:12", cpu=1, memory_gb=1, disk_gb=1, **fields)


TOOLCHAIN = recipe(
    "toolchain-1",
    apt_packages=("postgresql-client",),
    programs=("node", "psql"),
    pip_packages=("six",),
    npm_packages=(NPM_CLI,),
    commands=("echo built by the recipe > made.txt && echo the-command-ran",),
    starter_files={"app/README.md": "# Starter\n", "app/src/main.py": "print('hi')\n"},
)


@pytest.fixture(scope="module")
def prepared(provider):
    """TOOLCHAIN prepared once for the module: its build log and how long the build took."""
    log: list[str] = []
    started = time.monotonic()
    provider.prepare_template(TOOLCHAIN, on_log=log.append)
    return log, time.monotonic() - started


def leftovers(root, name):
    return sorted(path.name for path in (root / "templates").glob(f"*{name}*") if not path.name.endswith(".lock"))


def test_prepare_builds_the_toolchain_and_logs_every_step(provider, local_root, prepared):
    log, _ = prepared

    for step in (
        "$ python3 -m venv /opt/template/python",
        "$ /opt/template/python/bin/pip install --upgrade pip",
        "$ /opt/template/python/bin/pip install six",
        f"$ npm install --global --prefix /opt/template/node {NPM_CLI}",
        "$ echo built by the recipe > made.txt && echo the-command-ran",
    ):
        assert step in log
    assert any("Successfully installed six" in line for line in log)  # the steps' own output
    assert "the-command-ran" in log
    assert any("Daytona only" in line for line in log)  # apt packages are not installed here
    assert provider.template_prepared("toolchain-1")
    manifest = json.loads((local_root / "templates" / "toolchain-1" / "prepared.json").read_text())
    assert manifest["name"] == "toolchain-1"
    assert manifest["path"] == ["/opt/template/python/bin", "/opt/template/node/bin"]
    assert leftovers(local_root, "toolchain-1") == ["toolchain-1"]  # no build directory left


def test_a_second_prepare_builds_nothing(provider, prepared):
    log: list[str] = []
    started = time.monotonic()
    provider.prepare_template(TOOLCHAIN, on_log=log.append)

    assert time.monotonic() - started < 1
    assert log == ["Template toolchain-1 is prepared already; nothing to build."]


def test_concurrent_prepares_build_once(local_root):
    slow = recipe("concurrent-1", commands=("sleep 1; echo building-once",))
    logs: list[list[str]] = [[], []]
    errors = []

    def prepare(log):
        try:
            make_provider(local_root).prepare_template(slow, on_log=log.append)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=prepare, args=(log,)) for log in logs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert not errors
    assert sum(log.count("building-once") for log in logs) == 1
    assert sorted(len(log) for log in logs)[0] == 1  # the other one waited, then built nothing
    assert any(log[0].endswith("nothing to build.") for log in logs)


def test_a_sandbox_of_the_template_has_its_toolchain_and_starter_files(provider, local_root, prepared):
    created = provider.create(spec(template="toolchain-1"), wait_seconds=10)
    record = provider.record(created.id)
    assert record["template"] == "toolchain-1"

    def sh(script: str) -> str:
        result = provider.execute(created.id, script, timeout=20)
        assert result.exit_code == 0, result.output
        return result.output

    assert sh("command -v python; python -c 'import six, sys; print(sys.prefix)'") == (
        "/opt/template/python/bin/python\n/opt/template/python\n"
    )
    assert "< moo >" in sh("cowsay moo")
    assert sh("cat /opt/template/made.txt") == "built by the recipe\n"
    assert sh("echo $PATH").startswith("/opt/template/python/bin:/opt/template/node/bin:")
    writing = provider.execute(created.id, "touch /opt/template/python/x", timeout=10)
    assert writing.exit_code != 0 and "Read-only file system" in writing.output
    assert sh("cat ~/app/README.md; stat -c '%U %a' ~/app/README.md ~/app/src ~/app/src/main.py") == (
        "# Starter\nsandbox 644\nsandbox 755\nsandbox 644\n"
    )
    if record["uid"] is not None:
        assert (local_root / created.id / "home" / "app" / "README.md").stat().st_uid == record["uid"]

    # A login shell (terminals, SSH) reads /etc/profile, which sets its own PATH: the
    # template's bin directories still come first.
    terminal = provider.open_terminal(created.id, session_id="template-login", cols=120, rows=24)
    terminal.write(b"echo py=$(command -v python)\n")
    read_until(terminal, b"py=/opt/template/python/bin/python")
    terminal.kill()

    provider.stop(created.id, wait_seconds=10)
    provider.start(created.id, wait_seconds=10)  # mounted again at every start
    assert sh("python -c 'import six; print(six.__name__)'") == "six\n"


def test_a_sandbox_whose_template_was_removed_still_starts(provider, local_root, caplog):
    provider.prepare_template(recipe("removable-1", starter_files={"notes.txt": "kept\n"}), on_log=lambda line: None)
    created = provider.create(spec(template="removable-1"), wait_seconds=10)
    assert provider.execute(created.id, "ls -d /opt/template; echo $PATH").output == f"/opt/template\n{INSIDE_PATH}\n"
    provider.stop(created.id, wait_seconds=10)

    shutil.rmtree(local_root / "templates" / "removable-1")  # an operator removed it
    assert not provider.template_prepared("removable-1")
    with caplog.at_level("WARNING", logger="sandboxes.providers.local.templates"):
        provider.start(created.id, wait_seconds=10)

    assert "removable-1 is not prepared here" in caplog.text
    result = provider.execute(created.id, "cat ~/notes.txt; ls /opt/template 2>&1 || true")
    assert result.output.startswith("kept\n") and "No such file or directory" in result.output


def test_sandboxes_without_a_template_are_as_before(provider, sandbox):
    assert provider.record(sandbox.id)["template"] == ""
    assert provider.execute(sandbox.id, "echo $PATH; ls /opt 2>&1 || true").output.startswith(f"{INSIDE_PATH}\n")


def test_creating_from_an_unprepared_template_is_refused(provider):
    with pytest.raises(ProviderError) as caught:
        provider.create(spec(template="never-prepared-1"), wait_seconds=10)

    assert caught.value.kind is ErrorKind.REJECTED
    assert str(caught.value) == "The template version never-prepared-1 is not prepared on this machine."


# --- failed builds -----------------------------------------------------------------------------


def test_a_missing_program_fails_the_build_with_its_name(provider, local_root):
    needs = recipe("missing-1", programs=("node", "joepro-no-such-program"), commands=("echo never",))
    log: list[str] = []
    with pytest.raises(ProviderError) as caught:
        provider.prepare_template(needs, on_log=log.append)

    assert caught.value.kind is ErrorKind.REJECTED
    assert str(caught.value) == ("This machine lacks joepro-no-such-program, which the template needs; install it.")
    assert "$ echo never" not in log
    assert not provider.template_prepared("missing-1")
    assert leftovers(local_root, "missing-1") == []


def test_a_failing_command_fails_the_build_with_its_output(provider, local_root):
    failing = recipe(
        "failing-1",
        commands=("echo step-one", "echo about-to-fail; echo the-reason >&2; exit 3", "echo never-reached"),
        starter_files={"a.txt": "a"},
    )
    log: list[str] = []
    with pytest.raises(ProviderError) as caught:
        provider.prepare_template(failing, on_log=log.append)

    assert caught.value.kind is ErrorKind.REJECTED
    message = str(caught.value)
    assert "echo the-reason >&2; exit 3` failed (exit status 3)" in message
    assert "about-to-fail\nthe-reason" in message
    assert "step-one" in log and "the-reason" in log and "$ echo never-reached" not in log
    assert not provider.template_prepared("failing-1")
    assert leftovers(local_root, "failing-1") == []  # nothing half-built


@pytest.mark.parametrize("path", ["/etc/motd", "../outside", "app/../../outside", ""])
def test_starter_files_stay_in_the_home(provider, local_root, path):
    with pytest.raises(ProviderError) as caught:
        provider.prepare_template(recipe("starter-1", starter_files={path: "x"}), on_log=lambda line: None)

    assert caught.value.kind is ErrorKind.REJECTED
    assert leftovers(local_root, "starter-1") == []


# --- execute -----------------------------------------------------------------------------------


def test_execute_returns_the_output_and_the_exit_status(provider, sandbox):
    result = provider.execute(sandbox.id, "echo out; echo err >&2; exit 7")
    assert (result.exit_code, result.output) == (7, "out\nerr\n")

    assert provider.execute(sandbox.id, "pwd; id -un").output == "/home/sandbox\nsandbox\n"
    tail = provider.execute(sandbox.id, "seq 1 1000", max_output=9)
    assert (tail.exit_code, tail.output) == (0, "999\n1000\n")


def test_execute_does_not_wait_for_a_background_child(provider, sandbox):
    started = time.monotonic()
    result = provider.execute(sandbox.id, "nohup sleep 30 >/dev/null 2>&1 & echo started")

    assert (result.exit_code, result.output) == (0, "started\n")
    assert time.monotonic() - started < 3


def test_execute_times_out(provider, sandbox):
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        provider.execute(sandbox.id, "sleep 20", timeout=0.5)

    assert caught.value.kind is ErrorKind.TIMEOUT
    assert time.monotonic() - started < 5


def test_execute_is_not_activity(provider, sandbox):
    before = provider.get(sandbox.id).last_activity_at
    recorded = provider.record(sandbox.id)["last_activity_at"]
    time.sleep(0.05)

    provider.execute(sandbox.id, "echo quiet")

    assert provider.get(sandbox.id).last_activity_at == before
    assert provider.record(sandbox.id)["last_activity_at"] == recorded
    provider.run(sandbox.id, ["true"])  # what does count, seen by the same measure
    assert provider.get(sandbox.id).last_activity_at > before


def test_execute_needs_a_running_sandbox(provider):
    stopped = provider.create(spec(), wait_seconds=10)
    provider.stop(stopped.id, wait_seconds=10)

    for remote_id, kind in ((stopped.id, ErrorKind.INVALID_STATE), ("0" * 32, ErrorKind.NOT_FOUND)):
        with pytest.raises(ProviderError) as caught:
            provider.execute(remote_id, "true")
        assert caught.value.kind is kind


def test_a_step_past_its_time_limit_is_stopped(provider, local_root, monkeypatch):
    monkeypatch.setattr("sandboxes.providers.local.templates.STEP_TIMEOUT", 0.5)
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        provider.prepare_template(recipe("slow-1", commands=("echo waiting; sleep 30",)), on_log=lambda line: None)

    assert time.monotonic() - started < 5
    assert "`echo waiting; sleep 30` was stopped after 0.5 s:\nwaiting" in str(caught.value)
    assert leftovers(local_root, "slow-1") == []
