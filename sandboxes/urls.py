from django.urls import path

from . import views
from .local_only import preview

urlpatterns = [
    path("sandbox-portal/", views.portal, name="portal"),
    path("sandboxes/<str:remote_id>/terminal/", views.terminal, name="sandbox-terminal"),
    path("sandboxes/<str:remote_id>/preview/", preview.preview, name="sandbox-preview"),
    path("sandboxes/<str:remote_id>/preview/<path:path>", preview.preview, name="sandbox-preview-path"),
]
