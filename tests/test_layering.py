"""The layering, read from the imports: doors call services, services call providers, only the
Daytona provider imports the SDK, and no module of the project imports itself in a circle."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("accounts", "environments", "joepro", "sandboxes", "usage")
PROVIDERS = "sandboxes.providers"
SERVICES = "sandboxes.services"
# The apps beside sandboxes/ have services of their own, which call sandboxes.services (and may
# name the provider contract's types), and doors that call them.
APP_SERVICES = (
    "usage.metering",
    "usage.cost",
    "usage.rollup",
    "usage.budgets",
    "usage.budget_emails",
    "usage.resources",
    "usage.instruments",
    "environments.models",
    "environments.builds",
)
DOORS = (
    "sandboxes.api",
    "sandboxes.views",
    "sandboxes.urls",
    "sandboxes.routing",
    "sandboxes.consumers",
    "sandboxes.live_consumer",
    "sandboxes.admin",
    "sandboxes.tasks",
    "sandboxes.management",
    "sandboxes.local_only",
    "sandboxes.preview",
    "sandboxes.webhooks",
    "usage.api",
    "usage.admin",
    "usage.tasks",
    "usage.report",
    "usage.chart",
    "usage.urls",
    "usage.metrics",
    "joepro.health",
    "environments.admin",
    "environments.tasks",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" not in path.parts:
                found[_module_name(path)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, anywhere in it (functions included, ``TYPE_CHECKING``
    blocks not), as absolute names; ``from package import submodule`` counts as importing the
    submodule only."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    imported = set()
    tree = ast.parse(path.read_text(), str(path))
    # Imports for type checkers only never run: they make no layer depend on another.
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            submodules = {f"{source}.{alias.name}" for alias in node.names} & set(MODULES)
            imported.update(submodules)
            if len(submodules) < len(node.names):
                imported.add(source)
    return imported


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _within(module: str, prefixes) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def test_the_modules_were_found():
    assert {"sandboxes.api", "sandboxes.services", "sandboxes.providers.base", "sandboxes.models"} <= set(MODULES)
    assert _within("sandboxes.services.launch", [SERVICES])
    assert PROVIDERS in IMPORTS["sandboxes.services.rows"], "the import reader misses relative imports"


def test_only_services_and_providers_import_the_providers():
    offenders = {
        name: sorted(module for module in imported if _within(module, [PROVIDERS]))
        for name, imported in IMPORTS.items()
        if not _within(name, [PROVIDERS, SERVICES, *APP_SERVICES])
    }
    assert {name: found for name, found in offenders.items() if found} == {}


@pytest.mark.parametrize("door", DOORS)
def test_each_door_goes_through_the_services(door):
    doors = [name for name in MODULES if _within(name, [door])]
    assert doors, f"no module {door}"
    for name in doors:
        assert not any(_within(module, [PROVIDERS]) for module in IMPORTS[name]), name


def test_services_and_models_know_no_door():
    for name, imported in IMPORTS.items():
        if _within(
            name, [SERVICES, *APP_SERVICES, "sandboxes.models", "usage.models", "environments.models", PROVIDERS]
        ):
            doors = sorted(module for module in imported if _within(module, DOORS))
            assert doors == [], f"{name} imports {doors}"
    assert not any(_within(module, [SERVICES]) for module in IMPORTS["sandboxes.models"])


def test_only_the_daytona_provider_imports_the_sdk():
    importers = sorted(name for name, imported in IMPORTS.items() if any(_within(m, ["daytona"]) for m in imported))
    assert importers and all(_within(name, ["sandboxes.providers.daytona"]) for name in importers), importers


def test_the_in_sandbox_agent_uses_the_standard_library_only():
    agent = "sandboxes.providers.local.agent"
    assert agent in MODULES
    assert not any(_within(module, PACKAGES) for module in IMPORTS[agent])


def test_no_import_circle():
    graph = {
        name: {module for module in imported if module in MODULES and module != name}
        for name, imported in IMPORTS.items()
    }
    visiting, done, circles = [], set(), []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            circles.append(visiting[visiting.index(name) :] + [name])
            return
        visiting.append(name)
        for module in sorted(graph[name]):
            visit(module)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
    assert circles == []


def test_the_ssh_gateway_does_not_load_the_daytona_sdk_without_a_key():
    script = (
        "import sys, django; django.setup(); from sandboxes import services; "
        "check = services.ssh_token_check('x' * 32); "
        "assert check.target is None, check; "
        "assert 'daytona' not in sys.modules, 'the Daytona SDK was imported'"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "joepro.settings", "SANDBOX_PROVIDER": "local"}
    env.pop("DAYTONA_API_KEY", None)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
