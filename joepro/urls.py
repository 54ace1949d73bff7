from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from sandboxes.api import api

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="portal", permanent=False)),
    path("", include("sandboxes.urls")),
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
    path("api/", api.urls),
]
