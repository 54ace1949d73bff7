from django.conf import settings
from django.shortcuts import render
from django.views.decorators.http import require_GET


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
