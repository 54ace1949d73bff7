"""Host uids are allocated host-wide: sandboxes of two deployments (two roots) on one host never
share one, a uid is reused only once its sandbox is deleted, and stale claims are taken over."""

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from tests.local_fixtures import ROOT_PREFIX, make_provider, run, spec, stop_everything

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes have their own uids only as root")

BASE = 2_100_000_000 + (os.getpid() % 1000) * 1000  # away from other test runs' uids


@pytest.fixture
def roots():
    made = [Path(tempfile.mkdtemp(prefix=f"{ROOT_PREFIX}{os.getpid()}-")) for _ in range(2)]
    registry = Path(tempfile.mkdtemp(prefix="joepro-uids-"))
    yield made, registry
    for root in made:
        if root.exists():
            stop_everything(root)
    shutil.rmtree(registry, ignore_errors=True)


def providers(roots, registry):
    return [make_provider(root, uid_base=BASE, uid_registry=registry) for root in roots]


def claim(registry: Path, uid: int) -> dict:
    return json.loads((registry / str(uid)).read_text())


def test_two_deployments_get_distinct_uids_and_reuse_only_after_delete(roots):
    (root_a, root_b), registry = roots
    a, b = providers((root_a, root_b), registry)
    first = a.create(spec(), wait_seconds=10)
    second = b.create(spec(), wait_seconds=10)
    third = a.create(spec(), wait_seconds=10)
    uids = [p.record(s.id)["uid"] for p, s in ((a, first), (b, second), (a, third))]
    assert uids == [BASE, BASE + 1, BASE + 2]
    assert claim(registry, BASE) | {"claimed_at": 0} == {"root": str(root_a), "sandbox": first.id, "claimed_at": 0}
    assert claim(registry, BASE + 1)["root"] == str(root_b)
    # The uid runs the sandbox's processes on the host.
    assert run(b, second.id, "echo hi > ~/f && cat ~/f") == "hi\n"
    assert (root_b / second.id / "home" / "f").stat().st_uid == BASE + 1

    stopped = b.stop(second.id, wait_seconds=5)
    assert stopped and (registry / str(BASE + 1)).exists()  # a stopped sandbox keeps its uid
    assert a.record(a.create(spec(), wait_seconds=10).id)["uid"] == BASE + 3

    b.delete(second.id)
    assert not (registry / str(BASE + 1)).exists()
    reused = a.create(spec(), wait_seconds=10)
    assert a.record(reused.id)["uid"] == BASE + 1


def test_stale_claims_are_taken_over(roots):
    (root_a, root_b), registry = roots
    old = time.time() - 3600
    registry.mkdir(exist_ok=True)
    # A root removed without deleting its sandboxes, and a sandbox removed behind the portal's back.
    (registry / str(BASE)).write_text(json.dumps({"root": "/nonexistent/root", "sandbox": "a" * 32, "claimed_at": old}))
    a, b = providers((root_a, root_b), registry)
    gone = b.create(spec(), wait_seconds=10)
    assert b.record(gone.id)["uid"] == BASE  # the dead root's claim was taken over
    stop_everything(root_b)  # root_b is removed, its claim left behind
    claim_file = registry / str(BASE)
    claim_file.write_text(json.dumps({**claim(registry, BASE), "claimed_at": old}))
    # A claim just made is never taken (its record may be being written).
    (registry / str(BASE + 1)).write_text(
        json.dumps({"root": "/nonexistent", "sandbox": "b" * 32, "claimed_at": time.time()})
    )
    taken = a.create(spec(), wait_seconds=10)
    assert a.record(taken.id)["uid"] == BASE
    assert claim(registry, BASE)["root"] == str(root_a)


def test_a_sandbox_from_before_the_registry_keeps_or_moves_its_uid(roots):
    (root_a, root_b), registry = roots
    before = Path(tempfile.mkdtemp(prefix="joepro-uids-before-"))
    try:
        # Both deployments made their first sandbox before the registry: both have uid BASE.
        a_before, b_before = (make_provider(r, uid_base=BASE, uid_registry=before / r.name) for r in (root_a, root_b))
        old_a, old_b = a_before.create(spec(), wait_seconds=10), b_before.create(spec(), wait_seconds=10)
        run(a_before, old_a.id, "mkdir -p project && echo mine > project/notes")
        a_before.stop(old_a.id, wait_seconds=5)
        b_before.stop(old_b.id, wait_seconds=5)
        assert a_before.record(old_a.id)["uid"] == b_before.record(old_b.id)["uid"] == BASE

        a, b = providers((root_a, root_b), registry)
        b.start(old_b.id, wait_seconds=5)  # seen first: keeps its uid
        assert b.record(old_b.id)["uid"] == BASE and claim(registry, BASE)["sandbox"] == old_b.id
        a.start(old_a.id, wait_seconds=5)  # its uid is taken: moved, its files with it
        moved = a.record(old_a.id)["uid"]
        assert moved != BASE and claim(registry, moved)["sandbox"] == old_a.id
        assert run(a, old_a.id, "cat project/notes && echo more >> project/notes && stat -c %u project/notes") == (
            "mine\n1000\n"
        )
        assert (root_a / old_a.id / "home" / "project" / "notes").stat().st_uid == moved
    finally:
        shutil.rmtree(before, ignore_errors=True)
