"""Local sandboxes' outbound network (slirp4netns): the package registries are reachable from
inside, the host, the portal's services and private ranges are not, nobody inside can change
that, the setting turns it off, and no slirp4netns outlives its sandbox."""

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from sandboxes.providers.local import is_alive
from sandboxes.providers.local.isolation import CA_BUNDLE, CA_BUNDLE_VARIABLES
from tests.local_fixtures import local_root, make_provider, provider, run, sandbox, spec  # noqa: F401 - fixtures

# Connects to every (host, port) of argv[1] at once, 2 s each; prints what became of each.
PROBE = """
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor

def attempt(target):
    try:
        socket.create_connection(tuple(target), timeout=2).close()
        return "connected"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"

targets = json.loads(sys.argv[1])
with ThreadPoolExecutor(len(targets)) as pool:
    print(json.dumps({f"{host}:{port}": outcome for (host, port), outcome in zip(targets, pool.map(attempt, targets))}))
"""

# One DNS query for pypi.org's A record over UDP to argv[1]; prints the first answer's address.
DNS_QUERY = """
import socket, struct, sys
query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
query += b"".join(bytes([len(label)]) + label for label in b"pypi.org".split(b".")) + b"\\0"
query += struct.pack("!HH", 1, 1)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
    client.settimeout(3)
    client.sendto(query, (sys.argv[1], 53))
    answer = client.recv(4096)
assert answer[:2] == query[:2] and struct.unpack("!H", answer[6:8])[0] > 0, answer
print(socket.inet_ntoa(answer[-4:]))
"""


def probe(provider, remote_id: str, targets: list[tuple[str, int]]) -> dict[str, str]:
    started = time.monotonic()
    result = provider.run(remote_id, ["python3", "-c", PROBE, json.dumps(targets)], timeout=30)
    assert result.exit_code == 0, result.stderr.decode()
    assert time.monotonic() - started < 10  # every attempt fails fast or times out after 2 s
    return json.loads(result.stdout)


def query_dns(provider, remote_id: str, server: str) -> tuple[int, str]:
    result = provider.run(remote_id, ["python3", "-c", DNS_QUERY, server], timeout=30)
    return result.exit_code, (result.stdout + result.stderr).decode()


def attempt(provider, remote_id: str, script: str) -> tuple[int, str]:
    result = provider.run(remote_id, ["bash", "-c", script], timeout=30)
    return result.exit_code, (result.stdout + result.stderr).decode()


def host_address() -> str:
    """The host's own address towards the registries (its eth0 here), found without routing tables."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.connect((socket.gethostbyname("pypi.org"), 443))
        return udp.getsockname()[0]


TEXT = {"capture_output": True, "text": True, "check": True}


def neighbour(address: str) -> str:
    """Another address of the host's /24: a machine beside it on its network."""
    *first, last = address.split(".")
    return ".".join([*first, str(1 if last != "1" else 2)])


def slirps_holding(netns: str) -> set[int]:
    """Host pids of the slirp4netns processes that hold the network namespace ``netns``."""
    holders = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "slirp4netns":
                continue
            if any(os.readlink(fd) == netns for fd in (entry / "fd").iterdir()):
                holders.add(int(entry.name))
        except OSError:
            continue
    return holders


def network_namespace(provider, remote_id: str) -> str:
    return os.readlink(f"/proc/{provider.record(remote_id)['process']['agent_pid']}/ns/net")


def wait_until_gone(pid: int, start: int, seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while is_alive(pid, start) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not is_alive(pid, start)


@pytest.fixture
def host_listener():
    """A TCP listener on every address of the host; yields its port and the peers it accepted."""
    server = socket.create_server(("0.0.0.0", 0))
    peers: list = []

    def accept() -> None:
        while True:
            try:
                connection, peer = server.accept()
            except OSError:
                return
            peers.append(peer)
            connection.close()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1], peers
    server.close()


# --- outbound ------------------------------------------------------------------------------------


def test_pip_downloads_a_package_from_pypi(provider, sandbox):
    out = run(
        provider,
        sandbox.id,
        "python3 -m pip download --no-deps --isolated --index-url https://pypi.org/simple six -d /tmp/dl "
        ">/dev/null && ls /tmp/dl",
        timeout=180,
    )
    assert out.startswith("six-") and out.strip().endswith(".whl")


def test_npm_fetches_a_package_from_the_registry(provider, sandbox):
    script = "cd ~ && npm pack is-number@7.0.0 --silent && tar -tzf is-number-7.0.0.tgz"
    out = run(provider, sandbox.id, script, timeout=180)
    assert "package/package.json" in out


def test_names_resolve_through_slirp4netns_dns(provider, sandbox):
    assert run(provider, sandbox.id, "cat /etc/resolv.conf") == "nameserver 10.0.2.3\n"
    assert run(provider, sandbox.id, "getent hosts pypi.org").split()[1] == "pypi.org"
    code, output = query_dns(provider, sandbox.id, "10.0.2.3")
    assert code == 0 and output.count(".") == 3, output
    code, output = query_dns(provider, sandbox.id, "10.255.255.53")  # the host's resolver, directly
    assert code != 0 and "No route to host" in output, output


def test_tools_trust_the_hosts_certificate_store(provider, sandbox):
    if not os.path.exists(CA_BUNDLE):
        pytest.skip(f"no {CA_BUNDLE} on this machine")
    values = run(provider, sandbox.id, " ".join(["printenv", *CA_BUNDLE_VARIABLES])).split()
    assert values == [CA_BUNDLE] * len(CA_BUNDLE_VARIABLES)


# --- what stays unreachable ----------------------------------------------------------------------


def test_the_host_its_services_and_private_ranges_are_unreachable(provider, sandbox, host_listener):
    port, peers = host_listener
    address = host_address()
    socket.create_connection((address, port), timeout=2).close()  # reachable on the host itself
    socket.create_connection(("127.0.0.1", 5432), timeout=2).close()  # PostgreSQL runs
    deadline = time.monotonic() + 2
    while not peers and time.monotonic() < deadline:
        time.sleep(0.01)
    peers.clear()
    blocked = [
        ("127.0.0.1", port),  # the sandbox's own loopback, not the host's
        ("10.0.2.2", port),  # slirp4netns's alias of the host's loopback
        ("10.0.2.2", 5432),
        ("10.0.2.2", 6379),
        (address, port),
        (address, 5432),
        ("10.0.2.3", 80),  # the DNS alias answers DNS only
        ("10.0.2.5", port),
        ("10.255.255.53", 53),  # the host's resolver, over TCP
        ("192.168.1.1", 80),
        ("172.16.0.1", 80),
        ("169.254.169.254", 80),  # cloud metadata
        ("100.64.0.1", 80),
        (neighbour(address), 80),  # the network the host is on, whatever its range
    ]
    outcomes = probe(provider, sandbox.id, [*blocked, ("pypi.org", 443)])
    assert outcomes.pop("pypi.org:443") == "connected"  # the network is up: what fails is blocked
    assert [target for target, outcome in outcomes.items() if outcome == "connected"] == []
    assert peers == []


def test_nobody_inside_can_change_the_routes_or_rules(provider, sandbox):
    for command in ("ip route del unreachable 10.0.0.0/8", "ip rule del pref 102", "ip route flush table main"):
        code, output = attempt(provider, sandbox.id, command)
        assert code != 0 and "Operation not permitted" in output, output
    routes = run(provider, sandbox.id, "ip route")
    assert "unreachable 10.0.0.0/8" in routes and "unreachable 169.254.0.0/16" in routes
    assert f"unreachable {host_address()}" in routes
    on_link = json.loads(subprocess.run(["ip", "-json", "-4", "route", "show", "scope", "link"], **TEXT).stdout)
    assert on_link and all(f"unreachable {route['dst']}" in routes for route in on_link)  # the LAN beside the host
    assert "prohibit" in run(provider, sandbox.id, "ip rule")
    code, output = attempt(provider, sandbox.id, "unshare -rn true")  # no namespace of its own either
    assert code != 0


# --- the processes behind it ---------------------------------------------------------------------


def test_stopping_a_sandbox_ends_its_slirp4netns_even_after_a_portal_restart(provider, local_root):
    remote = provider.create(spec(), wait_seconds=10)
    process = provider.record(remote.id)["process"]
    pid, start = process["network_pid"], process["network_start"]
    netns = network_namespace(provider, remote.id)
    assert slirps_holding(netns) == {pid}
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    assert "0" not in next(line for line in status if line.startswith("Uid:")).split()[1:]  # not root on the host

    make_provider(local_root).stop(remote.id, wait_seconds=10)  # another portal process

    assert wait_until_gone(pid, start)
    assert slirps_holding(netns) == set()
    provider.start(remote.id, wait_seconds=10)  # and a new one at the next start
    again = provider.record(remote.id)["process"]
    assert is_alive(again["network_pid"], again["network_start"])
    assert run(provider, remote.id, "getent hosts pypi.org")
    provider.stop(remote.id, wait_seconds=10)
    assert wait_until_gone(again["network_pid"], again["network_start"])


def test_slirp4netns_exits_with_a_sandbox_killed_by_hand(provider):
    remote = provider.create(spec(), wait_seconds=10)
    process = provider.record(remote.id)["process"]
    os.kill(process["agent_pid"], 9)
    assert wait_until_gone(process["network_pid"], process["network_start"])
    provider.stop(remote.id, wait_seconds=10)


# --- the setting -------------------------------------------------------------------------------


def test_with_the_network_off_a_sandbox_has_none(local_root):
    offline = make_provider(local_root, network=False)
    remote = offline.create(spec(), wait_seconds=10)
    assert "network_pid" not in offline.record(remote.id)["process"]
    assert slirps_holding(network_namespace(offline, remote.id)) == set()
    assert "tap0" not in run(offline, remote.id, "cat /proc/net/dev")
    assert run(offline, remote.id, "cat /etc/resolv.conf") == Path("/etc/resolv.conf").read_text()
    code, _ = attempt(offline, remote.id, "getent hosts pypi.org")
    assert code != 0
    outcomes = probe(offline, remote.id, [(socket.gethostbyname("pypi.org"), 443), ("10.0.2.2", 5432)])
    assert all("Network is unreachable" in outcome for outcome in outcomes.values()), outcomes
    offline.stop(remote.id, wait_seconds=10)


def test_without_slirp4netns_the_system_check_fails_only_with_the_network_on(settings, monkeypatch, tmp_path):
    settings.SANDBOX_PROVIDER = "local"
    settings.SANDBOX_BWRAP = shutil.which("bwrap")  # found without PATH
    monkeypatch.setenv("PATH", str(tmp_path))  # no slirp4netns on it
    settings.SANDBOX_LOCAL_NETWORK = True
    with pytest.raises(SystemCheckError) as caught:
        call_command("check")
    assert "sandboxes.E013" in str(caught.value) and "slirp4netns" in str(caught.value)
    assert "apt-get install slirp4netns" in str(caught.value) and "SANDBOX_LOCAL_NETWORK=false" in str(caught.value)
    settings.SANDBOX_LOCAL_NETWORK = False
    try:
        call_command("check")
    except SystemCheckError as exc:  # what else this PATH lacks
        assert "sandboxes.E013" not in str(exc)
