"""Sandboxes on Daytona, through its official SDK (this package is the only code importing it).

- :mod:`.provider`: :class:`DaytonaProvider`, the provider contract on Daytona's REST API, with
  its own waits (no ``SIGALRM``) and its client built on first use.
- :mod:`.errors`: SDK and transport failures as :class:`ProviderError`, secrets scrubbed; the
  retry and backoff policy and the rate-limit hints it honours.
- :mod:`.convert`: Daytona state words and DTOs as the contract's dataclasses, and the create
  request built from a :class:`SandboxSpec`.
- :mod:`.terminal`: :class:`DaytonaTerminal`, a PTY session through the toolbox proxy.
"""

from .convert import remote_state
from .errors import provider_error
from .provider import DaytonaProvider
from .terminal import DaytonaTerminal

__all__ = ["DaytonaProvider", "DaytonaTerminal", "provider_error", "remote_state"]
