"""Terminal sessions in a sandbox, for the doors that bridge them (the web terminal, the SSH
gateway)."""

from __future__ import annotations

from sandboxes.models import Sandbox, SandboxState
from sandboxes.providers.base import ProviderError, TerminalSession

from .errors import SandboxError, provider_failures_as_sandbox_errors
from .rows import portal_state, provider_for


class Terminal:
    """One attachment to a PTY session in a sandbox: the provider's :class:`TerminalSession`
    (whose docstrings say what each call does), with failures raised as :class:`SandboxError`."""

    __slots__ = ("_session",)

    def __init__(self, session: TerminalSession):
        self._session = session

    @property
    def session_id(self) -> str:
        return self._session.session_id

    @property
    def exit_code(self) -> int | None:
        return self._session.exit_code

    def read(self) -> bytes:
        try:
            return self._session.read()
        except ProviderError as error:
            raise SandboxError.from_provider(error) from error

    def write(self, data: bytes) -> None:
        try:
            self._session.write(data)
        except ProviderError as error:
            raise SandboxError.from_provider(error) from error

    def resize(self, cols: int, rows: int) -> None:
        try:
            self._session.resize(cols, rows)
        except ProviderError as error:
            raise SandboxError.from_provider(error) from error

    def detach(self) -> None:
        try:
            self._session.detach()
        except ProviderError as error:
            raise SandboxError.from_provider(error) from error

    def kill(self) -> None:
        try:
            self._session.kill()
        except ProviderError as error:
            raise SandboxError.from_provider(error) from error


@provider_failures_as_sandbox_errors
def terminal_open(*, sandbox: Sandbox, session_id: str, cols: int, rows: int) -> Terminal:
    """Attach to the browser's PTY session ``session_id`` (a login shell) of the running
    sandbox, creating it when it does not exist; the shell outlives the attachment. Never
    starts the sandbox: ``SandboxError`` of kind ``invalid_state`` when it is not running,
    ``not_found`` when it is gone. Blocking."""
    session = provider_for(sandbox).open_terminal(sandbox.remote_id, session_id=session_id, cols=cols, rows=rows)
    return Terminal(session)


def sandbox_remote_state(*, sandbox: Sandbox) -> SandboxState | None:
    """The portal's state for what the provider reports now (``gone`` when it is gone); None
    when the provider cannot be asked. Reads only: the row is left as it is. Blocking."""
    try:
        remote = provider_for(sandbox).get(sandbox.remote_id)
    except ProviderError:
        return None
    return portal_state(remote)
