"""Operator pages of usage under admin (``/admin/usage/...``), behind admin's own sign-in."""

from django.contrib import admin
from django.urls import path

from .report import usage_report

urlpatterns = [path("report/", admin.site.admin_view(usage_report), name="usage-report")]
