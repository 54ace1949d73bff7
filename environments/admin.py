"""Templates in admin: operators edit them (a change of what is built makes a new version, built
in the background), see each provider's build with its log as it grows, and build a failed one
again."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db import transaction
from django.utils.html import format_html, format_html_join

from . import builds
from .models import Template, TemplateBuild

State = TemplateBuild.State


class BuildInline(admin.TabularInline):
    model = TemplateBuild
    fields = ["provider", "artifact", "state", "short_error", "finished_at", "log_link"]
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = False

    @admin.display(description="why it failed")
    def short_error(self, build):
        return build.error[:200]

    @admin.display(description="log")
    def log_link(self, build):
        return format_html('<a href="../../../templatebuild/{}/change/">build log</a>', build.pk)


@admin.register(Template)
class TemplateAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "is_default", "enabled", "version", "builds_now", "position"]
    list_editable = ["position"]
    search_fields = ["name", "slug"]
    inlines = [BuildInline]
    readonly_fields = ["version", "artifact_name"]
    fieldsets = [
        (None, {"fields": ["name", "slug", "description", "position", "is_default", "enabled"]}),
        (
            "What is built (a change makes a new version)",
            {
                "fields": [
                    "base_image",
                    "apt_packages",
                    "programs",
                    "pip_packages",
                    "npm_packages",
                    "build_commands",
                    "starter_files",
                    "cpu",
                    "memory_gb",
                    "disk_gb",
                    "version",
                    "artifact_name",
                ]
            },
        ),
        ("On every start", {"fields": ["start_command", "ready_port", "idle_minutes"]}),
    ]

    def get_readonly_fields(self, request, obj=None):
        return [*self.readonly_fields, "slug"] if obj is not None else self.readonly_fields

    @admin.display(description="builds of this version")
    def builds_now(self, template):
        current = {build.provider: build for build in template.builds.all() if build.version == template.version}
        return format_html_join(
            ", ",
            "{}: {}",
            ((name, current[name].state if name in current else "not asked") for name in builds.provider_names()),
        )

    def save_model(self, request, obj, form, change):
        with transaction.atomic():
            if obj.is_default:
                Template.objects.exclude(pk=obj.pk).filter(is_default=True).update(is_default=False)
            super().save_model(request, obj, form, change)
            if obj.enabled and builds.request_builds([obj]):
                messages.info(request, f"Version {obj.version} of {obj.name} is being built; it is offered once built.")


@admin.register(TemplateBuild)
class TemplateBuildAdmin(admin.ModelAdmin):
    list_display = ["artifact", "provider", "state", "requested_at", "finished_at", "attempts"]
    list_filter = ["state", "provider"]
    search_fields = ["artifact", "template__slug"]
    actions = ["build_again"]
    fields = [
        "template",
        "provider",
        "artifact",
        "state",
        "error",
        "requested_at",
        "started_at",
        "finished_at",
        "output",
    ]
    readonly_fields = fields

    def has_add_permission(self, request):
        return False  # builds are asked for by saving a template

    @admin.display(description="log")
    def output(self, build):
        return format_html('<pre class="build-log">{}</pre>', build.log or "(nothing yet)")

    def change_view(self, request, object_id, form_url="", extra_context=None):
        build = self.get_object(request, object_id)
        live = build is not None and build.state in (State.QUEUED, State.BUILDING)
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), "live_build": live})

    @admin.action(description="Build the selected failed builds again", permissions=["change"])
    def build_again(self, request, queryset):
        queued = sum(builds.rebuild(build) for build in queryset)
        messages.info(request, f"{queued} build(s) queued again; the others were not failed.")
