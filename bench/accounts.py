"""Users, sessions and sandbox rows, written with the ORM in the harness's own process.

:func:`setup` must run first: it points Django at the benchmark's database with the same
settings as the portal processes (the same secret key, so the session cookies made here are
valid there).
"""

from __future__ import annotations

import os
import secrets
import string
from dataclasses import dataclass

CSRF_ALPHABET = string.ascii_letters + string.digits


def setup(env: dict[str, str]) -> None:
    import django

    for key in [key for key in os.environ if key.startswith(("DAYTONA_", "SANDBOX_"))]:
        del os.environ[key]
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "joepro.settings"
    django.setup()


@dataclass(frozen=True)
class Visitor:
    """A signed-in user as seen from a browser: the cookies and the CSRF header."""

    user_id: int
    email: str
    remote_name: str
    headers: dict[str, str]


def make_users(prefix: str, count: int) -> list:
    """``count`` users with unusable passwords (no hashing: thousands are made in a second)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password

    User = get_user_model()
    password = make_password(None)
    users = [
        User(username=f"{prefix}{index}", email=f"{prefix}{index}@bench.invalid", password=password)
        for index in range(count)
    ]
    return User.objects.bulk_create(users, batch_size=2000)


def visitors(users: list) -> list[Visitor]:
    """A session per user (stored in the database, as sign-in would store it)."""
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    from sandboxes.services import remote_name_for

    result = []
    for user in users:
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        csrf = "".join(secrets.choice(CSRF_ALPHABET) for _ in range(32))
        headers = {
            "Cookie": f"{settings.SESSION_COOKIE_NAME}={session.session_key}; {settings.CSRF_COOKIE_NAME}={csrf}",
            "X-CSRFToken": csrf,
            "Content-Type": "application/json",
        }
        result.append(Visitor(user_id=user.pk, email=user.email, remote_name=remote_name_for(user), headers=headers))
    return result


def new_visitors(prefix: str, count: int) -> list[Visitor]:
    return visitors(make_users(prefix, count))


def owner_labels_of(user_id: int | str) -> dict[str, str]:
    """The labels the portal gives the sandbox of the user ``user_id`` (any owner key)."""
    from sandboxes.services import LABEL_OWNER, managed_labels

    return {**managed_labels(), LABEL_OWNER: str(user_id)}


def owner_of(labels: dict[str, str]) -> str | None:
    from sandboxes.services import LABEL_OWNER

    return labels.get(LABEL_OWNER)


def add_sandbox_rows(rows: list[dict]) -> None:
    """Sandbox rows for sandboxes that exist in the fake (``user_id``, ``remote_id``,
    ``remote_name``, ``state``, ``labels``)."""
    from django.conf import settings
    from django.utils import timezone

    from sandboxes.models import Sandbox

    now = timezone.now()
    Sandbox.objects.bulk_create(
        [
            Sandbox(
                user_id=row["user_id"],
                provider="daytona",
                remote_name=row["remote_name"],
                remote_id=row["remote_id"],
                state=row["state"],
                backend_state=row["state"],
                cpu=settings.SANDBOX_CPU,
                memory_gb=settings.SANDBOX_MEMORY_GB,
                disk_gb=settings.SANDBOX_DISK_GB,
                labels=row["labels"],
                state_changed_at=now,
                last_started_at=now,
                last_activity_at=now,
                last_synced_at=now,
            )
            for row in rows
        ],
        batch_size=2000,
    )


def forget_sandboxes() -> None:
    """Delete every sandbox row (the fake is reset alongside)."""
    from sandboxes.models import AuditEvent, Sandbox

    AuditEvent.objects.all().delete()
    Sandbox.objects.all().delete()


def sandbox_states() -> dict[str, int]:
    from django.db.models import Count

    from sandboxes.models import Sandbox

    return {row["state"]: row["n"] for row in Sandbox.objects.values("state").annotate(n=Count("id"))}


def close_connections() -> None:
    from django.db import connections

    connections.close_all()
