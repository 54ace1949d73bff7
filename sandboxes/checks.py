from django.conf import settings
from django.core.checks import Error, Tags, register

from . import services


@register(Tags.compatibility)
def check_sandbox_provider(app_configs=None, **kwargs):
    errors = []
    provider = settings.SANDBOX_PROVIDER
    if provider not in services.PROVIDER_NAMES:
        errors.append(
            Error(
                f"SANDBOX_PROVIDER is {provider!r}, which is not a known provider.",
                hint=f"Set SANDBOX_PROVIDER to one of: {', '.join(services.PROVIDER_NAMES)}.",
                id="sandboxes.E001",
            )
        )
    if provider == "daytona" and not settings.DAYTONA_API_KEY:
        errors.append(
            Error(
                "SANDBOX_PROVIDER is 'daytona' but DAYTONA_API_KEY is not set.",
                hint="Set DAYTONA_API_KEY (and DAYTONA_API_URL, DAYTONA_TARGET if not the defaults), "
                "or unset SANDBOX_PROVIDER to run sandboxes on this machine.",
                id="sandboxes.E002",
            )
        )
    if provider == "local":
        errors.extend(_local_provider_errors())
    if provider == "daytona" and not (settings.SANDBOX_IMAGE or settings.SANDBOX_SNAPSHOT):
        errors.append(
            Error(
                "Neither SANDBOX_IMAGE nor SANDBOX_SNAPSHOT is set.",
                hint="Set SANDBOX_IMAGE (e.g. node:20-bookworm) or SANDBOX_SNAPSHOT.",
                id="sandboxes.E003",
            )
        )
    if settings.SANDBOX_REMOTE_AUTO_STOP_MINUTES and (
        settings.SANDBOX_REMOTE_AUTO_STOP_MINUTES <= settings.SANDBOX_IDLE_MINUTES
    ):
        errors.append(
            Error(
                "SANDBOX_REMOTE_AUTO_STOP_MINUTES must be 0 or longer than SANDBOX_IDLE_MINUTES.",
                hint="The provider's own auto-stop is a backstop; a shorter one stops sandboxes "
                "the portal still counts as in use.",
                id="sandboxes.E004",
            )
        )
    errors.extend(_access_lifetime_errors())
    return errors


# Daytona signs preview and terminal links for at most a day (expiresInSeconds 1..86400), and the
# portal signs them for as long as the SSH token lives.
DAYTONA_MAX_LINK_MINUTES = 24 * 60


def _access_lifetime_errors() -> list[Error]:
    minutes = settings.SANDBOX_SSH_TOKEN_MINUTES
    if minutes < 1:
        return [
            Error(
                f"SANDBOX_SSH_TOKEN_MINUTES is {minutes}; access must last at least a minute.",
                hint="Set SANDBOX_SSH_TOKEN_MINUTES to a number of minutes, e.g. 120.",
                id="sandboxes.E009",
            )
        ]
    uses_daytona = settings.SANDBOX_PROVIDER == "daytona" or bool(settings.DAYTONA_API_KEY)
    if uses_daytona and minutes > DAYTONA_MAX_LINK_MINUTES:
        return [
            Error(
                f"SANDBOX_SSH_TOKEN_MINUTES is {minutes}, but Daytona signs preview and terminal links for at most "
                f"{DAYTONA_MAX_LINK_MINUTES} minutes (24 hours), and the portal signs them for as long as the SSH "
                "token lasts: every launch would fail.",
                hint=f"Set SANDBOX_SSH_TOKEN_MINUTES to {DAYTONA_MAX_LINK_MINUTES} or less.",
                id="sandboxes.E009",
            )
        ]
    return []


LOCAL_PROBLEM_IDS = {
    "bwrap_missing": "sandboxes.E005",
    "bwrap_fails": "sandboxes.E006",
    "python_missing": "sandboxes.E007",
    "root_not_traversable": "sandboxes.E008",
    "root_visible": "sandboxes.E008",
}


def _local_provider_errors() -> list[Error]:
    """Sandboxes on this machine need a working bubblewrap; without one the portal says so
    here instead of running anyone's shell unisolated. bwrap is probed once per process."""
    return [
        Error(
            f"SANDBOX_PROVIDER is 'local' (the default without DAYTONA_API_KEY), but {problem.message}",
            hint=problem.hint,
            id=LOCAL_PROBLEM_IDS[problem.code],
        )
        for problem in services.provider_problems("local")
    ]
