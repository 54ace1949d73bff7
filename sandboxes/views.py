from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET

from . import services
from .http import no_store
from .models import Sandbox
from .origins import parse_origin

# Sec-Fetch-Site values of a navigation the portal itself (or the user, typing or from a
# bookmark) started; "same-site" is another origin too (another port of the portal's host).
OWN_NAVIGATION = {"same-origin", "none"}


def navigated_from_the_portal(request) -> bool:
    """Whether this page load came from the portal's own pages (or the address bar), so that it
    may change state by itself: by ``Sec-Fetch-Site`` where the browser sends it, otherwise by
    a ``Referer`` of the portal's own origin. A link on any other site, or no word at all, is not."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site in OWN_NAVIGATION
    try:
        referer = urlsplit(request.headers.get("Referer", ""))
    except ValueError:
        return False
    if not referer.netloc or "@" in referer.netloc:
        return False
    referer_origin = parse_origin(f"{referer.scheme}://{referer.netloc}")
    return referer_origin is not None and referer_origin == parse_origin(f"{request.scheme}://{request.get_host()}")


@require_GET
def portal(request):
    specs = {
        "cpu": settings.SANDBOX_CPU,
        "memory_gb": settings.SANDBOX_MEMORY_GB,
        "disk_gb": settings.SANDBOX_DISK_GB,
        "idle_minutes": settings.SANDBOX_IDLE_MINUTES,
        "idle_hours": settings.SANDBOX_IDLE_MINUTES / 60,
        "ssh_minutes": settings.SANDBOX_SSH_TOKEN_MINUTES,
        "preview_port": settings.SANDBOX_PREVIEW_PORT,
    }
    # ?launch=1 (back from the sign-in) starts the launch by itself, but never for a link on
    # another site: there the page shows the usual button.
    auto_launch = (
        request.user.is_authenticated and request.GET.get("launch") == "1" and navigated_from_the_portal(request)
    )
    has_sandbox = (
        request.user.is_authenticated and Sandbox.objects.filter(user=request.user).exclude(remote_id="").exists()
    )
    context = {
        "specs": specs,
        "auto_launch": auto_launch,
        "has_sandbox": has_sandbox,
        "templates": services.templates_offered() if request.user.is_authenticated else [],
    }
    return render(request, "sandboxes/portal.html", context)


@require_GET
@login_required
def terminal(request, remote_id: str):
    """The browser terminal of the user's own sandbox; anyone else's is a 404."""
    sandbox = get_object_or_404(Sandbox, user=request.user, remote_id=remote_id)
    return no_store(render(request, "sandboxes/terminal.html", {"sandbox": sandbox}))


@require_GET
@login_required
def dashboard(request):
    """The owner's dashboard: the page's script fills it from the JSON API. A user whose sandbox
    has never been made is sent to the portal, whose launcher makes it."""
    mine = list(Sandbox.objects.filter(user=request.user).exclude(remote_id="").select_related("template"))
    chosen = request.GET.get("template")
    sandbox = next((row for row in mine if row.template.slug == chosen), None) or services.own_row(request.user)
    if sandbox is None or not sandbox.remote_id:
        return redirect("portal")
    query = f"?template={sandbox.template.slug}"
    context = {"sandbox": sandbox, "sandboxes": mine if len(mine) > 1 else [], "query": query}
    return no_store(render(request, "sandboxes/dashboard.html", context))
