from django.urls import path

from . import views
from .preview import door

urlpatterns = [
    path("sandbox-portal/", views.portal, name="portal"),
    path("sandbox-portal/sandbox/", views.dashboard, name="sandbox-dashboard"),
    path("sandboxes/<str:remote_id>/terminal/", views.terminal, name="sandbox-terminal"),
    path("sandboxes/<str:remote_id>/preview/", door.open_preview, name="sandbox-preview"),
    path("sandboxes/<str:remote_id>/preview/<path:path>", door.open_preview, name="sandbox-preview-path"),
]
