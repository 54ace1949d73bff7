"""Templates in the provider contract: what a template version is made of, as a provider
prepares it once (:meth:`TemplateMethods.prepare_template`) for every later create from it
(:attr:`sandboxes.providers.base.SandboxSpec.template`).

A template version is named ``<slug>-<hash of its definition>`` (:attr:`TemplateRecipe.name`):
a changed definition is a new name, so a prepared version never changes under a sandbox made
from it, and preparing the same name twice is the same work once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# Where a template's starter files land and its app's output is kept, relative to the
# sandbox user's home.
APP_LOG = ".joepro/app.log"


@dataclass(frozen=True)
class TemplateRecipe:
    """One template version, as the providers build it.

    ``base_image`` is what a Daytona snapshot starts from; ``apt_packages`` are installed
    into it. Local sandboxes share this machine's ``/usr`` instead, so there the packages are
    not installed: ``programs`` (commands on ``PATH``, such as ``node`` or ``psql``) must be
    on the machine, and a version whose programs are missing fails to prepare with the names
    of those missing. ``pip_packages`` go into a virtual environment of the template's own,
    ``npm_packages`` into a global prefix of its own, ``commands`` (shell lines) run after both;
    the template's bin directories come first on the sandbox's ``PATH``. ``starter_files``
    (path relative to the home: text) are in the home of every new sandbox of the version.
    """

    name: str
    base_image: str
    cpu: int
    memory_gb: int
    disk_gb: int
    apt_packages: tuple[str, ...] = ()
    programs: tuple[str, ...] = ()
    pip_packages: tuple[str, ...] = ()
    npm_packages: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()
    starter_files: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ScriptResult:
    """What :meth:`TemplateMethods.execute` ran to: its exit status and its output (stdout and
    stderr mixed, decoded as UTF-8 with replacement, at most what the call asked for)."""

    exit_code: int
    output: str


BuildLog = Callable[[str], None]


class TemplateMethods:
    """The template part of :class:`sandboxes.providers.base.SandboxProvider`."""

    def prepare_template(self, recipe: TemplateRecipe, *, on_log: BuildLog) -> None:
        """Build the template version ``recipe`` (Daytona: the snapshot ``recipe.name``; this
        machine: its toolchain and starter files, outside any sandbox), so that creating a
        sandbox from it builds nothing.

        Blocking, for a background job: a first build takes minutes. Idempotent: a version
        already prepared returns at once, one being prepared elsewhere is waited for. Each line
        of the build's log goes to ``on_log`` as it comes (never a secret). Raises
        ``ProviderError(kind=REJECTED)`` with the build's reason when the build failed (a
        later call builds again), ``kind=UNAVAILABLE`` or ``TIMEOUT`` when the backend could
        not be asked.
        """
        raise NotImplementedError

    def template_prepared(self, name: str) -> bool:
        """Whether the template version ``name`` is prepared and usable now. Authoritative, cheap."""
        raise NotImplementedError

    def execute(self, remote_id: str, script: str, *, timeout: float = 10.0, max_output: int = 65536) -> ScriptResult:
        """Run the shell script ``script`` (``sh -c``) in the running sandbox as its user, in
        its home, and wait for it (at most ``timeout`` seconds: then ``kind=TIMEOUT``, the
        script killed). A background child whose output is redirected does not hold the call.
        Never counts as use of the sandbox. Raises ``kind=INVALID_STATE`` when the sandbox is not
        running and ``kind=NOT_FOUND`` when it is gone."""
        raise NotImplementedError
