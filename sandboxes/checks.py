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
    return errors


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
