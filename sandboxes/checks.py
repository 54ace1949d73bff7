import ipaddress
from functools import cache
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from publicsuffixlist import PublicSuffixList

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
    if settings.DAYTONA_WEBHOOK_SECRET and not services.webhook_secret_valid(settings.DAYTONA_WEBHOOK_SECRET):
        errors.append(
            Error(
                "DAYTONA_WEBHOOK_SECRET is not a Svix signing secret.",
                hint="Copy the endpoint's signing secret (whsec_...) from Daytona's webhook settings, "
                "or leave it empty to take no webhooks.",
                id="sandboxes.E012",
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


@register(Tags.security)
def check_preview_site(app_configs=None, **kwargs):
    """Previews run the users' own code: on the portal's site (the same registrable domain)
    that code could act with the portal's cookies and pose as its pages."""
    preview = urlsplit(settings.SANDBOX_PREVIEW_URL)
    if (
        preview.scheme not in ("http", "https")
        or not preview.hostname
        or preview.path not in ("", "/")
        or _is_address(preview.hostname)
    ):
        return [
            Error(
                f"SANDBOX_PREVIEW_URL is {settings.SANDBOX_PREVIEW_URL!r}, which is not a scheme and a host name.",
                hint="Set it to the base of the preview hosts, e.g. https://preview.example-usercontent.com "
                "(previews are then served at https://<port>-<sandbox>.preview.example-usercontent.com).",
                id="sandboxes.E010",
            )
        ]
    portal_host = urlsplit(settings.PORTAL_URL).hostname or ""
    preview_host = f"3000-sandbox.{preview.hostname}"
    hosts = [portal_host, *(host.lstrip(".") for host in settings.ALLOWED_HOSTS if host not in ("*", ""))]
    shared = sorted({host for host in hosts if host and registrable_domain(host) == registrable_domain(preview_host)})
    if shared:
        return [
            Warning(
                f"Previews ({preview.hostname} and its subdomains) are on the same site as the portal "
                f"({', '.join(shared)}): users' apps could act with the portal's cookies.",
                hint="Serve previews from a domain of their own (SANDBOX_PREVIEW_URL), with a wildcard DNS name "
                "and certificate, as hosted sandboxes do.",
                id="sandboxes.W010",
            )
        ]
    return []


@cache
def _public_suffixes() -> PublicSuffixList:
    return PublicSuffixList()


def registrable_domain(host: str) -> str:
    """The site a host belongs to: its registrable domain by the Public Suffix List; an IP
    address or a name that is itself a public suffix (``localhost``) is a site of its own."""
    host = host.strip("[]").lower().rstrip(".")
    if _is_address(host):
        return host
    return _public_suffixes().privatesuffix(host) or host


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


LOCAL_PROBLEM_IDS = {
    "bwrap_missing": "sandboxes.E005",
    "bwrap_fails": "sandboxes.E006",
    "python_missing": "sandboxes.E007",
    "root_not_traversable": "sandboxes.E008",
    "root_visible": "sandboxes.E008",
    "disk_images_unavailable": "sandboxes.E011",
    "slirp4netns_missing": "sandboxes.E013",
    "network_unavailable": "sandboxes.E013",
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
