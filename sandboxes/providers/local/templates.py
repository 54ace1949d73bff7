"""Template versions on this machine: a toolchain and starter files per version, prepared once
outside any sandbox (:func:`prepare`) and mounted read-only into every sandbox made from it.

Under the provider's root::

    templates/<name>/prepared.json   {"name", "prepared_at", "path", ...}: the version is prepared
                                     once this exists (written last, before the rename below)
    templates/<name>/toolchain/      /opt/template in the version's sandboxes, read-only: python/
                                     (a venv), node/ (an npm prefix), what the recipe's commands made
    templates/<name>/starter/        the starter files, copied into the home of each new sandbox
    templates/.<name>.lock           held (flock) while the version is prepared
    templates/.<name>.<hex>.build/   a build in progress, renamed to <name>/ once it succeeded

A build runs its steps in a bubblewrap *build container*: this machine's ``/usr`` and the
sandboxes' ``/etc`` files read-only (never ``/etc/pip.conf`` or ``/etc/npmrc``), the host's
network, the toolchain being built read-write at ``/opt/template`` (a venv's scripts name the path
they were made at, so it is made where it is mounted) and a throwaway home and ``/tmp``. It is
not a sandbox: it is this machine's operator preparing its own toolchain, as the portal's user.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ..base import ErrorKind, ProviderError
from ..templates import BuildLog, ScriptResult, TemplateRecipe
from .agent_client import CommandResult
from .isolation import ETC_ENTRIES, INSIDE_PATH, INSIDE_TOOLCHAIN, system_binds
from .store import flock, remove_tree, write_file

logger = logging.getLogger(__name__)

TEMPLATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MANIFEST = "prepared.json"
# The template's own bin directories, first on the PATH of its sandboxes (those it has).
TOOLCHAIN_BINS = (f"{INSIDE_TOOLCHAIN}/python/bin", f"{INSIDE_TOOLCHAIN}/node/bin")
BUILD_HOME = "/home/build"
BUILD_WAIT = 3600.0  # a build of the same version elsewhere is waited for at most this long
STEP_TIMEOUT = 1800.0
LOG_TAIL = 20  # lines of a failed step's output in the error
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
CA_VARIABLES = ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")
# The operator's own choices of package index and proxy, from the portal's environment.
PASSED_THROUGH = (
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_TRUSTED_HOST",
    "npm_config_registry",
    "NPM_CONFIG_REGISTRY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
)
# The build sees the host's name service (sandboxes get their own hosts, passwd and group).
BUILD_ETC = tuple(dict.fromkeys((*ETC_ENTRIES, "hosts", "passwd", "group", "resolv.conf")))
DEBIAN_PACKAGES = {"node": "nodejs", "npm": "nodejs", "python3": "python3", "psql": "postgresql-client", "git": "git"}


def directory(root: Path, name: str) -> Path:
    return root / "templates" / name


def is_prepared(root: Path, name: str) -> bool:
    return bool(TEMPLATE_NAME.fullmatch(name or "")) and (directory(root, name) / MANIFEST).is_file()


# --- preparing a version ----------------------------------------------------------------------


def prepare(root: Path, recipe: TemplateRecipe, *, on_log: BuildLog, bwrap: str) -> None:
    """Prepare ``recipe`` under ``root`` unless it is prepared (see the module's docstring).

    Checked before anything is built: the name, the starter files' paths and that this machine
    has the recipe's programs (REJECTED otherwise). Under the version's lock, so concurrent
    calls build it once: the others wait, then find it prepared. A failed step raises REJECTED
    with its last lines of output, and leaves nothing behind."""
    if not TEMPLATE_NAME.fullmatch(recipe.name or ""):
        raise ProviderError(f"{recipe.name!r} is not a valid template version name.", kind=ErrorKind.REJECTED)
    starter = {_starter_path(path): text for path, text in recipe.starter_files.items()}
    _check_programs(recipe)
    container = shutil.which(bwrap)
    if container is None:
        raise ProviderError(f"bubblewrap ({bwrap}) is not installed on this machine.", kind=ErrorKind.UNAVAILABLE)
    if is_prepared(root, recipe.name):
        on_log(f"Template {recipe.name} is prepared already; nothing to build.")
        return
    templates = root / "templates"
    templates.mkdir(parents=True, exist_ok=True)
    os.chmod(templates, 0o711)  # sandbox uids reach their toolchain through it, nothing more
    fd = os.open(templates / f".{recipe.name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            flock(fd, BUILD_WAIT, "")
        except ProviderError as exc:
            message = f"The template {recipe.name} is still being prepared elsewhere."
            raise ProviderError(message, kind=ErrorKind.TIMEOUT, retryable=True) from exc
        if is_prepared(root, recipe.name):
            on_log(f"Template {recipe.name} was prepared meanwhile; nothing to build.")
            return
        _remove_leftovers(templates, recipe.name)
        build = templates / f".{recipe.name}.{secrets.token_hex(4)}.build"
        build.mkdir(mode=0o700)
        try:
            started = time.monotonic()
            _build(build, recipe, starter, on_log=on_log, bwrap=container)
            os.rename(build, directory(root, recipe.name))
        except BaseException:
            remove_tree(build)
            raise
        on_log(f"Template {recipe.name} prepared in {time.monotonic() - started:.1f} s.")
        logger.info("local template %s prepared", recipe.name)
    finally:
        os.close(fd)


def _build(build: Path, recipe: TemplateRecipe, starter: dict[str, str], *, on_log: BuildLog, bwrap: str) -> None:
    toolchain, scratch = build / "toolchain", build / "scratch"
    for path in (toolchain, scratch / "home", scratch / "tmp"):
        path.mkdir(parents=True, mode=0o755)
    if recipe.apt_packages:
        on_log(
            f"Debian packages ({' '.join(recipe.apt_packages)}) are installed on Daytona only: "
            "local sandboxes use this machine's programs."
        )
    _write_starter(build / "starter", starter)
    argv = _container_argv(bwrap, toolchain, scratch)
    venv = f"{INSIDE_TOOLCHAIN}/python"
    steps = []
    if recipe.pip_packages:
        steps += [
            ["python3", "-m", "venv", venv],
            [f"{venv}/bin/pip", "install", "--upgrade", "pip"],
            [f"{venv}/bin/pip", "install", *recipe.pip_packages],
        ]
    if recipe.npm_packages:
        steps.append(["npm", "install", "--global", "--prefix", f"{INSIDE_TOOLCHAIN}/node", *recipe.npm_packages])
    for step in steps:
        _run_step(argv + step, shlex.join(step), on_log)
    for command in recipe.commands:
        _run_step(argv + ["sh", "-c", command], command, on_log)
    remove_tree(scratch)
    os.chmod(build, 0o711)  # sandboxes' uids reach the toolchain through it
    os.chmod(toolchain, 0o755)
    manifest = {
        "name": recipe.name,
        "prepared_at": time.time(),
        "path": [entry for entry in TOOLCHAIN_BINS if _on_host(toolchain, entry).is_dir()],
        "pip_packages": list(recipe.pip_packages),
        "npm_packages": list(recipe.npm_packages),
        "programs": list(recipe.programs),
    }
    write_file(build / MANIFEST, json.dumps(manifest, indent=1), mode=0o644)


def _write_starter(files: Path, starter: dict[str, str]) -> None:
    files.mkdir(mode=0o700)
    for path, text in sorted(starter.items()):
        target = files / path
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_file(target, text, mode=0o644)
        except OSError as exc:  # one starter file's path is another's directory
            raise ProviderError(f"The starter file {path!r} cannot be written: {exc}", kind=ErrorKind.REJECTED) from exc


def _run_step(argv: list[str], display: str, on_log: BuildLog) -> None:
    """Run one step in the build container, each line of its output to ``on_log`` as it
    comes; REJECTED with its last lines when it fails or outlives :data:`STEP_TIMEOUT`."""
    on_log(f"$ {display}")
    tail: deque[str] = deque(maxlen=LOG_TAIL)
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        umask=0o022,  # what sandboxes' uids may read
    )
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        _kill_group(process.pid)

    timer = threading.Timer(STEP_TIMEOUT, expire)
    timer.start()
    try:
        for raw in iter(lambda: process.stdout.readline(1 << 16), b""):
            line = raw.decode(errors="replace").rstrip("\r\n")
            tail.append(line)
            on_log(line)
        status = process.wait()
    finally:
        timer.cancel()
        if process.poll() is None:
            _kill_group(process.pid)  # on_log raised: the step must not outlive the build
            process.wait()
        process.stdout.close()
    if status != 0:
        why = f"was stopped after {STEP_TIMEOUT:g} s" if expired.is_set() else f"failed (exit status {status})"
        output = "\n".join(line[:300] for line in tail if line.strip())
        message = f"The template step `{display}` {why}" + (f":\n{output}" if output else ".")
        raise ProviderError(message, kind=ErrorKind.REJECTED)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _container_argv(bwrap: str, toolchain: Path, scratch: Path) -> list[str]:
    """The build container's bwrap command line, up to the step's own argv."""
    env = {
        "HOME": BUILD_HOME,
        "PATH": ":".join([*TOOLCHAIN_BINS, INSIDE_PATH]),
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "PIP_CONFIG_FILE": os.devnull,  # no configuration file of this machine's, as --isolated
        "PIP_NO_INPUT": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
    }
    if os.path.exists(CA_BUNDLE):
        env.update(dict.fromkeys(CA_VARIABLES, CA_BUNDLE))  # the machine's CAs (TLS-inspecting proxies)
    env.update({key: os.environ[key] for key in PASSED_THROUGH if os.environ.get(key)})
    argv = [bwrap, "--unshare-all", "--share-net", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    argv.append("--clearenv")
    for key, value in env.items():
        argv += ["--setenv", key, value]
    argv += system_binds()
    for entry in BUILD_ETC:
        if os.path.exists(f"/etc/{entry}"):
            argv += ["--ro-bind", f"/etc/{entry}", f"/etc/{entry}"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--dir", "/var", "--symlink", "../tmp", "/var/tmp"]
    argv += ["--bind", str(scratch / "home"), BUILD_HOME, "--bind", str(scratch / "tmp"), "/tmp"]
    argv += ["--bind", str(toolchain), INSIDE_TOOLCHAIN, "--remount-ro", "/", "--chdir", INSIDE_TOOLCHAIN, "--"]
    return argv


def _check_programs(recipe: TemplateRecipe) -> None:
    """REJECTED naming the programs the recipe needs that sandboxes here would not find."""
    needed = list(recipe.programs)
    if recipe.pip_packages:
        needed.append("python3")
    if recipe.npm_packages:
        needed += ["node", "npm"]
    missing = [name for name in dict.fromkeys(needed) if shutil.which(name, path=INSIDE_PATH) is None]
    if not missing:
        return
    names = " and ".join([", ".join(missing[:-1]), missing[-1]] if len(missing) > 1 else missing)
    packages = ", ".join(dict.fromkeys(DEBIAN_PACKAGES[name] for name in missing if name in DEBIAN_PACKAGES))
    raise ProviderError(
        f"This machine lacks {names}, which the template needs; install {'them' if len(missing) > 1 else 'it'}"
        + (f" (Debian: {packages})" if packages else "")
        + ".",
        kind=ErrorKind.REJECTED,
    )


def _starter_path(path: str) -> str:
    """``path`` normalised, relative to the home; REJECTED when it is absolute or leaves it."""
    normal = posixpath.normpath(path or ".")
    if "\0" in path or posixpath.isabs(path) or normal == "." or normal.split("/")[0] == "..":
        raise ProviderError(f"The starter file {path!r} is not a path inside the home.", kind=ErrorKind.REJECTED)
    return normal


def _remove_leftovers(templates: Path, name: str) -> None:
    """Under the version's lock: builds cut short, and a directory without its manifest."""
    for leftover in templates.glob(f".{name}.*.build"):
        remove_tree(leftover)
    if directory(templates.parent, name).exists():
        remove_tree(directory(templates.parent, name))


# --- sandboxes of a version -------------------------------------------------------------------


@dataclass(frozen=True)
class Toolchain:
    """A prepared version's toolchain as a sandbox gets it: ``directory`` (on the host)
    mounted read-only at /opt/template, ``path`` first on its ``PATH``."""

    directory: Path
    path: tuple[str, ...]

    def login_profile(self, host_profile: str = "/etc/profile") -> str:
        """The sandbox's /etc/profile: this machine's, whose PATH login shells take, then the
        toolchain's bin directories before it."""
        try:
            text = Path(host_profile).read_text()
        except OSError:
            text = ""
        path = ":".join(shlex.quote(entry) for entry in self.path)
        return f'{text.rstrip()}\n\n# The template\'s toolchain (JoePro)\nPATH="{path}:$PATH"\nexport PATH\n'


def _on_host(toolchain: Path, inside: str) -> Path:
    """Where the path ``inside`` of /opt/template lies in the toolchain on the host."""
    return toolchain / posixpath.relpath(inside, INSIDE_TOOLCHAIN)


def toolchain_for(root: Path, record: dict) -> Toolchain | None:
    """The toolchain of the sandbox's template version; None without one, and when the version
    is no longer prepared here (an operator removed it: the sandbox starts without it)."""
    name = record.get("template") or ""
    if not name:
        return None
    toolchain = directory(root, name) / "toolchain"
    try:
        manifest = json.loads((directory(root, name) / MANIFEST).read_text()) if TEMPLATE_NAME.fullmatch(name) else {}
    except (OSError, ValueError):
        manifest = {}
    if not manifest or not toolchain.is_dir():
        logger.warning("local sandbox %s: template %s is not prepared here; starting without it", record["id"], name)
        return None
    path = tuple(
        entry for entry in manifest.get("path") or () if entry in TOOLCHAIN_BINS and _on_host(toolchain, entry).is_dir()
    )
    return Toolchain(directory=toolchain, path=path)


def copy_starter(root: Path, name: str, home: Path, uid: int | None) -> None:
    """Copy the version's starter files into a new sandbox's ``home``: directories 0755 and
    files 0644, owned by ``uid`` when the sandbox has its own; symlinks are neither followed
    nor copied."""
    starter = directory(root, name) / "starter"
    if not starter.is_dir():
        logger.warning("local template %s has no starter files here; the new home has none", name)
        return
    for source_dir, names, files in os.walk(starter):  # never into a symlinked directory
        relative = Path(source_dir).relative_to(starter)
        for entry in names + files:
            source, target = Path(source_dir, entry), home / relative / entry
            if source.is_symlink() or target.is_symlink():
                continue
            if entry in files:
                _copy_file(source, target, uid)
                continue
            target.mkdir(mode=0o755, exist_ok=True)
            os.chmod(target, 0o755)
            if uid is not None:
                os.lchown(target, uid, uid)


def _copy_file(source: Path, target: Path, uid: int | None) -> None:
    try:
        source_fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return  # a symlink (ELOOP), or gone
    try:
        target_fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            while chunk := os.read(source_fd, 1 << 16):
                os.write(target_fd, chunk)
            os.fchmod(target_fd, 0o644)
            if uid is not None:
                os.fchown(target_fd, uid, uid)
        finally:
            os.close(target_fd)
    finally:
        os.close(source_fd)


def script_result(result: CommandResult, max_output: int) -> ScriptResult:
    """What :meth:`LocalProvider.execute` returns for the agent's ``exec`` result: stdout then
    stderr, the last ``max_output`` characters of them; TIMEOUT when the script was killed."""
    if result.timed_out:
        raise ProviderError("The script did not finish in time and was killed.", kind=ErrorKind.TIMEOUT)
    output = (result.stdout + result.stderr).decode(errors="replace")
    exit_code = result.exit_code if result.exit_code is not None else -1
    return ScriptResult(exit_code=exit_code, output=output[-max_output:] if max_output > 0 else "")
