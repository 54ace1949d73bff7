from allauth.account.decorators import secure_admin_login
from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from sandboxes.api import api

# Operators sign in through the portal's sign-in page, whose failed attempts are rate limited:
# the admin's own login form would let anyone guess staff passwords without those limits.
# A signed-in user who is not staff gets a 403 here.
admin.site.login = secure_admin_login(admin.site.login)

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="portal", permanent=False)),
    path("", include("sandboxes.urls")),
    path("accounts/", include("allauth.urls")),
    path("admin/usage/", include("usage.urls")),
    path("admin/", admin.site.urls),
    path("api/", api.urls),
]
