"""What an SSH session channel runs in the sandbox, and how.

With a PTY (``ssh <token>@<host>``, ``ssh -t ... 'top'``) the login shell or the command runs on
a PTY session of its own, as on any SSH server. Without one (``ssh ... 'make test'``,
``ssh ... < script.sh``, the ``sftp`` subsystem, ``scp``) it runs on pipes: stdout and stderr
arrive on their own streams, input is binary-safe, the end of the client's input is the
program's end of file, and the exit status is the program's.

Either way the program runs as the sandbox's user inside the sandbox's namespaces: the gateway
never touches a file itself. SFTP, and with it OpenSSH 9's default ``scp``, is OpenSSH's own
``sftp-server`` run inside the sandbox (sandboxes see the host's ``/usr``, read-only); legacy
``scp -O`` is a command like any other (``scp -t``/``scp -f``).

Both kinds offer the same blocking calls, made off the event loop: :meth:`open`, :meth:`read`
(``(stream, bytes)``, ``(0, b"")`` at the end), :meth:`write`, :meth:`end_input`,
:meth:`resize`, :meth:`end` and :attr:`exit_code`.
"""

from __future__ import annotations

import secrets

from sandboxes import services

STDOUT, STDERR = services.Process.STDOUT, services.Process.STDERR
SFTP_SERVER = "/usr/lib/openssh/sftp-server"  # Debian's openssh-sftp-server
SUBSYSTEMS = {"sftp": [SFTP_SERVER]}
DEFAULT_SIZE = (80, 24)


class PtyProgram:
    """The login shell (no command) or ``bash -lc <command>`` on a PTY session of its own,
    killed when the channel closes (the web terminal's sessions outlive their websockets)."""

    def __init__(self, target: services.SshTarget, command: str | None, size: tuple[int, int]):
        self._target = target
        self._argv = None if command is None else ["/bin/bash", "-lc", command]
        self._size = size
        self._terminal: services.Terminal | None = None

    def open(self) -> None:
        cols, rows = self._size
        self._terminal = services.ssh_terminal_open(
            target=self._target, session_id=f"ssh-{secrets.token_hex(8)}", cols=cols, rows=rows, command=self._argv
        )

    def read(self) -> tuple[int, bytes]:
        data = self._terminal.read()
        return (STDOUT, data) if data else (0, b"")

    def write(self, data: bytes) -> None:
        self._terminal.write(data)

    def end_input(self) -> None:
        pass  # a terminal has no end of input: ^D is the user's to type

    def resize(self, cols: int, rows: int) -> None:
        self._terminal.resize(cols, rows)

    def end(self) -> None:
        self._terminal.kill()
        self._terminal.detach()

    @property
    def exit_code(self) -> int | None:
        return self._terminal.exit_code


class PipeProgram:
    """``bash -lc <command>``, a login shell reading a script from its input (no command), or a
    subsystem's server, on pipes; killed (its whole process group) when the channel closes."""

    def __init__(self, target: services.SshTarget, argv: list[str]):
        self._target = target
        self._argv = argv
        self._process: services.Process | None = None

    @classmethod
    def for_command(cls, target: services.SshTarget, command: str | None) -> PipeProgram:
        return cls(target, ["/bin/bash", "-l"] if command is None else ["/bin/bash", "-lc", command])

    def open(self) -> None:
        self._process = services.ssh_process_open(target=self._target, argv=self._argv)

    def read(self) -> tuple[int, bytes]:
        return self._process.read()

    def write(self, data: bytes) -> None:
        self._process.write(data)

    def end_input(self) -> None:
        self._process.close_input()

    def resize(self, cols: int, rows: int) -> None:
        pass

    def end(self) -> None:
        self._process.close()

    @property
    def exit_code(self) -> int | None:
        return self._process.exit_code
