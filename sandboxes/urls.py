from django.urls import path

from . import views

urlpatterns = [
    path("sandbox-portal/", views.portal, name="portal"),
]
