from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from .http import no_store
from .models import Sandbox


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
    return render(request, "sandboxes/portal.html", {"specs": specs})


@require_GET
@login_required
def terminal(request, remote_id: str):
    """The browser terminal of the user's own sandbox; anyone else's is a 404."""
    sandbox = get_object_or_404(Sandbox, user=request.user, remote_id=remote_id)
    return no_store(render(request, "sandboxes/terminal.html", {"sandbox": sandbox}))
