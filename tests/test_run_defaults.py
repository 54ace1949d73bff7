"""``make run`` never shows Django's debug page, and still serves plain HTTP on 127.0.0.1.

The attack: a malformed request to a portal started with ``bin/run`` on a shared machine shows
Django's debug page, with settings and code, to whoever sent it. ``bin/run`` is run for real in a
stand-in checkout (its setup, Celery and the database steps are stubs); its web server command is
replaced by the portal's own ``manage.py shell -c``, which reads the settings exactly as the web
server would under the environment ``bin/run`` hands it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
SETTINGS = (
    "import json; from django.conf import settings as s; print(json.dumps({'debug': s.DEBUG,"
    " 'ssl_redirect': s.SECURE_SSL_REDIRECT, 'secure_cookies': s.SESSION_COOKIE_SECURE,"
    " 'hsts': s.SECURE_HSTS_SECONDS, 'static': s.STORAGES['staticfiles']['BACKEND']}))"
)
RUN_VARIABLES = ("DJANGO_DEBUG", "DJANGO_SECURE_SSL_REDIRECT", "DJANGO_SECURE_COOKIES", "DJANGO_HSTS_SECONDS")


def script(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def settings_under_bin_run(tmp_path: Path, **environment: str) -> dict:
    checkout = tmp_path / "checkout"
    (checkout / "bin").mkdir(parents=True)
    (checkout / "bin" / "run").write_bytes((ROOT / "bin" / "run").read_bytes())
    (checkout / "bin" / "run").chmod(0o755)
    script(checkout / "bin" / "setup", "exit 0")
    script(checkout / "bin" / "ensure-packages", "exit 0")
    # check, migrate and collectstatic succeed; no SSH gateway is needed.
    script(checkout / ".venv" / "bin" / "python", '[ "$2" = run_ssh_gateway ] && exit 1\nexit 0')
    script(checkout / ".venv" / "bin" / "celery", "exec sleep 30")
    out = tmp_path / "settings.json"
    script(checkout / "bin" / "serve", f'cd "{ROOT}" && exec "{PYTHON}" manage.py shell -c "{SETTINGS}" > "{out}"')

    env = {name: value for name, value in os.environ.items() if name not in RUN_VARIABLES}
    env.update(environment, PORT="8765")
    run = subprocess.run([checkout / "bin" / "run"], cwd=tmp_path, env=env, capture_output=True, timeout=60)
    assert out.exists() and out.read_text().strip(), run.stderr.decode()
    return json.loads(out.read_text().strip().splitlines()[-1])  # after the shell's own notes


def test_bin_run_defaults_to_debug_off_over_plain_http(tmp_path):
    settings = settings_under_bin_run(tmp_path)

    assert settings["debug"] is False
    # Plain HTTP on 127.0.0.1 still works: no redirect to HTTPS, cookies sent over HTTP, no HSTS ...
    assert settings["ssl_redirect"] is False
    assert settings["secure_cookies"] is False
    assert settings["hsts"] == 0
    # ... and the pages name the hashed files collectstatic wrote.
    assert settings["static"] == "joepro.storage.StaticFilesStorage"


def test_bin_run_keeps_what_the_environment_says(tmp_path):
    settings = settings_under_bin_run(tmp_path, DJANGO_DEBUG="true", DJANGO_HSTS_SECONDS="60")

    assert settings["debug"] is True
    assert settings["hsts"] == 60
