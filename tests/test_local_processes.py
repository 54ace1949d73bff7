"""Programs on pipes in local sandboxes (``open_process``) and the contract methods the portal
calls on running sandboxes (``end_terminal``, ``set_auto_stop``), with a real bubblewrap."""

import threading
import time

import pytest

from sandboxes.providers.base import Capability, ErrorKind, ProcessSession, ProviderError
from sandboxes.providers.local.agent_client import agent_status
from tests.local_fixtures import local_root, provider, read_until, sandbox, spec  # noqa: F401 - fixtures

STDOUT, STDERR = ProcessSession.STDOUT, ProcessSession.STDERR


def drain(process) -> tuple[bytes, bytes]:
    """Everything the program writes until it ends: (stdout, stderr)."""
    streams = {STDOUT: b"", STDERR: b""}
    while True:
        stream, data = process.read()
        if not stream:
            return streams[STDOUT], streams[STDERR]
        streams[stream] += data


def in_sandbox(provider, remote_id: str, pattern: str) -> bool:  # noqa: F811
    return provider.run(remote_id, ["pgrep", "-f", pattern]).exit_code == 0


def test_the_local_provider_runs_programs_on_pipes(provider):  # noqa: F811
    assert provider.supports(Capability.PROCESS)


def test_a_program_on_pipes_keeps_its_streams_apart_and_its_input_binary(provider, sandbox):  # noqa: F811
    data = bytes(range(256)) * 1024 + b"\x04\x03\r\n"
    process = provider.open_process(sandbox.id, ["bash", "-c", "cat; echo to-stderr >&2; tty; exit 3"])
    try:
        process.write(data)
        process.close_input()
        stdout, stderr = drain(process)
    finally:
        process.close()

    assert stdout == data + b"not a tty\n"
    assert stderr == b"to-stderr\n"
    assert process.exit_code == 3


def test_the_program_reads_end_of_file_only_when_the_input_is_closed(provider, sandbox):  # noqa: F811
    process = provider.open_process(sandbox.id, ["bash", "-c", "read line; echo got-$line; cat; echo eof"])
    try:
        process.write(b"one\n")
        assert process.read() == (STDOUT, b"got-one\n")
        process.write(b"two\n")
        assert process.read() == (STDOUT, b"two\n")
        process.close_input()
        assert drain(process) == (b"eof\n", b"")
    finally:
        process.close()
    assert process.exit_code == 0


def test_a_program_that_reads_no_input_can_still_be_killed(provider, sandbox):  # noqa: F811
    process = provider.open_process(sandbox.id, ["sleep", "300"])
    writer = threading.Thread(target=process.write, args=(b"x" * (16 << 20),), daemon=True)
    writer.start()  # blocks: nobody reads the input
    time.sleep(0.3)

    started = time.monotonic()
    process.kill()
    assert drain(process) == (b"", b"")
    process.close()
    writer.join(timeout=5)

    assert time.monotonic() - started < 3
    assert process.exit_code == 137  # SIGKILL
    assert not writer.is_alive()


def test_background_children_hold_the_session_until_they_let_go_of_its_output(provider, sandbox):  # noqa: F811
    process = provider.open_process(sandbox.id, ["bash", "-c", "(sleep 0.5; echo late) & echo early"])
    try:
        assert drain(process) == (b"early\nlate\n", b"")  # as over OpenSSH
    finally:
        process.close()
    assert process.exit_code == 0


def test_closing_the_session_kills_the_program_and_its_children(provider, sandbox):  # noqa: F811
    process = provider.open_process(sandbox.id, ["bash", "-c", "sleep 301 & sleep 302 & echo started; wait"])
    assert process.read() == (STDOUT, b"started\n")

    process.close()
    process.close()  # idempotent

    deadline = time.monotonic() + 5
    while in_sandbox(provider, sandbox.id, "sleep 30[12]") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not in_sandbox(provider, sandbox.id, "sleep 30[12]")


def test_a_missing_program_says_so_on_stderr(provider, sandbox):  # noqa: F811
    process = provider.open_process(sandbox.id, ["/no/such/program"])
    stdout, stderr = drain(process)
    process.close()

    assert stdout == b"" and b"/no/such/program" in stderr and stderr.endswith(b"\n")
    assert process.exit_code == 127


def test_open_process_refuses_bad_programs_and_stopped_sandboxes(provider):  # noqa: F811
    stopped = provider.create(spec(), wait_seconds=10)
    provider.stop(stopped.id, wait_seconds=10)

    with pytest.raises(ProviderError) as empty:
        provider.open_process(stopped.id, [])
    with pytest.raises(ProviderError) as not_running:
        provider.open_process(stopped.id, ["true"])
    with pytest.raises(ProviderError) as gone:
        provider.open_process("0" * 32, ["true"])

    assert empty.value.kind is ErrorKind.REJECTED
    assert not_running.value.kind is ErrorKind.INVALID_STATE
    assert gone.value.kind is ErrorKind.NOT_FOUND
    provider.delete(stopped.id)


def test_end_terminal_ends_one_session_and_is_idempotent(provider, sandbox):  # noqa: F811
    ended = provider.open_terminal(sandbox.id, session_id="ended-one", cols=80, rows=24)
    kept = provider.open_terminal(sandbox.id, session_id="kept-one", cols=80, rows=24)
    try:
        read_until(ended, b"$ ")
        read_until(kept, b"$ ")

        provider.end_terminal(sandbox.id, "ended-one")
        while ended.read():
            pass
        provider.end_terminal(sandbox.id, "ended-one")  # gone already
        provider.end_terminal(sandbox.id, "never-was")
        provider.end_terminal(sandbox.id, "not a valid id!")
        provider.end_terminal("0" * 32, "ended-one")  # no such sandbox

        kept.write(b"echo still-$((20+1))\n")
        read_until(kept, b"still-21")
        sessions = agent_status(provider.store.socket_path(sandbox.id))["sessions"]
    finally:
        ended.detach()
        kept.kill()
        kept.detach()

    assert ended.exit_code is not None
    assert "kept-one" in sessions and "ended-one" not in sessions


def test_set_auto_stop_is_recorded_and_reaches_the_running_agent(provider, sandbox):  # noqa: F811
    provider.set_auto_stop(sandbox.id, 45)
    recorded = provider.record(sandbox.id)["auto_stop_minutes"]
    status = agent_status(provider.store.socket_path(sandbox.id))
    provider.set_auto_stop(sandbox.id, 0)

    assert recorded == 45 and status["auto_stop"] == 45 * 60
    assert agent_status(provider.store.socket_path(sandbox.id))["auto_stop"] == 0
    with pytest.raises(ProviderError) as gone:
        provider.set_auto_stop("0" * 32, 10)
    assert gone.value.kind is ErrorKind.NOT_FOUND
