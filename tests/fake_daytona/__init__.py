"""A loopback HTTP emulator of Daytona's API, for tests and benchmarks.

It speaks the wire protocol the real ``daytona`` SDK uses: the REST API under ``/api``,
toolbox PTY websockets under ``/toolbox/<sandboxId>`` (real ``bash -i`` shells), and a
preview proxy serving signed links at ``/preview/<token>/``::

    fake = FakeDaytona(api_key="test-key").start()
    client = Daytona(DaytonaConfig(api_key="test-key", api_url=fake.api_url, target="us"))
    fake.fault("create", "status", status=429, headers={"Retry-After-sandbox-create": "1"})
    fake.fault("get", "reset", times=4)          # urllib3 retries a GET three times
    fake.fault("start", "commit_then_reset")     # the start happens, the answer is lost
    fake.set_state("u-42", "stopped")            # an out-of-band change
    fake.fault("create", "ends_in_error", message="no runner")  # accepted, then errors
    fake.fail_builds_containing("FROM broken")   # image builds that end in build_failed
    fake.set_rate_limit("sandbox-create", 2)     # the third create in a minute gets 429
    fake.timings = Timings.instant()             # from .timings; or .realistic().scaled(0.1)
    fake.advance_clock(165)                      # transitions complete on the fake clock
    fake.webhooks.subscribe(url, "whsec_...")    # Svix-signed sandbox events (.webhooks)
    fake.stop()

Sandboxes behave as the hosted service: transitions take realistic time by default
(:mod:`.timings`; the pytest fixture ``fake_daytona`` is instant), a create from a snapshot
and a start are held up to 30 s until the sandbox runs (:mod:`.holds`), image builds are
cached by the Dockerfile's text (:mod:`.builds`), a delete renames the sandbox and lets it go
later, the listing lags behind deletes and pages on last activity (:mod:`.listing`), and
every API call counts against per-minute rate limits (:mod:`.ratelimits`). Snapshots
(``/api/snapshots``, :mod:`.snapshots`) are built or pulled through their states, stream their
build log from the proxy, and are what a create with ``snapshot=<name>`` must name (the
general ``daytonaio/sandbox:0.4.3`` when it names none); ``fake.add_snapshot(name)`` seeds one.

Another process can drive it over HTTP: ``POST /__faults``, ``GET /__stats``,
``POST /__state``, ``POST /__clock``, ``POST /__reset``, ``POST /__config`` (latency,
``timings``, ``time_scale``, ``transition_seconds``, ``list_lag``, ``rate_limits``,
``rate_limit_window``, ``failing_builds``, ``create_answer_after_hold``, SSH host and port),
``POST /__seed``, ``POST /__delete``, ``POST /__autostop``, ``GET /__sandboxes``,
``GET|POST /__snapshots``; and
``python -m tests.fake_daytona --timings instant --rate-limit sandbox-create=2`` (or
``FAKE_DAYTONA_TIMINGS=instant``) sets the same from the command line.
"""

from .faults import OPERATIONS, Fault
from .server import FakeDaytona, RecordedRequest

__all__ = ["OPERATIONS", "FakeDaytona", "Fault", "RecordedRequest"]
