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
    fake.stop()

Another process can drive it over HTTP: ``POST /__faults``, ``GET /__stats``,
``POST /__state``, ``POST /__clock``, ``POST /__reset``, ``POST /__config``,
``POST /__seed``, ``POST /__delete``, ``POST /__autostop``, ``GET /__sandboxes``.
"""

from .faults import OPERATIONS, Fault
from .server import FakeDaytona, RecordedRequest

__all__ = ["OPERATIONS", "FakeDaytona", "Fault", "RecordedRequest"]
