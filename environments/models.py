"""The template registry: the ready environments users choose from, and each provider's build
of each version of them."""

from __future__ import annotations

import hashlib
import json

from django.db import models
from django.db.models import Q

from sandboxes.providers.templates import TemplateRecipe

DEFAULT_READY_PORT = 3000


class TemplateQuerySet(models.QuerySet):
    def offered(self, provider_name: str) -> list[Template]:
        """The templates users may choose on that provider: enabled, with the build of their
        current version ready, in the page's order."""
        ready = set(
            TemplateBuild.objects.filter(provider=provider_name, state=TemplateBuild.State.READY).values_list(
                "template_id", "version"
            )
        )
        return [template for template in self.filter(enabled=True) if (template.pk, template.version) in ready]

    def default(self) -> Template:
        """What one click opens: the template marked default, else the first in order; with no
        template at all (an operator removed them), the shipped default made again."""
        found = self.filter(is_default=True).first() or self.order_by("position", "pk").first()
        if found is None:
            from .shipped import TEMPLATES

            fields = next(fields for fields in TEMPLATES if fields.get("is_default"))
            found, _ = Template.objects.get_or_create(slug=fields["slug"], defaults=fields)
        return found


class Template(models.Model):
    """A ready environment. Everything that goes into building it is its definition
    (:meth:`definition`): changing any of it makes a new version (:attr:`version`), built anew
    for every provider before it is offered; name, description, order, the start command, the
    readiness port and the idle period change nothing built."""

    slug = models.SlugField(max_length=32, unique=True, help_text="Part of sandbox names; never changed.")
    name = models.CharField(max_length=64)
    description = models.TextField(blank=True)
    position = models.PositiveSmallIntegerField(default=0, help_text="Order on the portal's page.")
    is_default = models.BooleanField(
        default=False, help_text="What one click on Open Dev Sandbox opens. Exactly one template is the default."
    )
    enabled = models.BooleanField(default=True, help_text="Offered to users (once built).")

    base_image = models.CharField(max_length=255, help_text="The image a Daytona snapshot starts from.")
    apt_packages = models.JSONField(default=list, blank=True, help_text="Debian packages (Daytona).")
    programs = models.JSONField(
        default=list,
        blank=True,
        help_text="Commands the environment needs; local sandboxes take them from this machine.",
    )
    pip_packages = models.JSONField(default=list, blank=True, help_text="Into the template's own virtualenv.")
    npm_packages = models.JSONField(default=list, blank=True, help_text="Installed globally, in a prefix of its own.")
    build_commands = models.JSONField(default=list, blank=True, help_text="Shell lines run after the packages.")
    starter_files = models.JSONField(
        default=dict, blank=True, help_text="Files in every new sandbox's home: {path relative to home: text}."
    )
    cpu = models.PositiveSmallIntegerField(default=2)
    memory_gb = models.PositiveSmallIntegerField(default=4)
    disk_gb = models.PositiveSmallIntegerField(default=8)

    start_command = models.TextField(
        blank=True,
        help_text="Run in the background, in the home, on every start (so the app comes back after a resume).",
    )
    ready_port = models.PositiveIntegerField(
        default=DEFAULT_READY_PORT, help_text="The preview is live once something listens on this port."
    )
    idle_minutes = models.PositiveIntegerField(
        null=True, blank=True, help_text="Idle period of its sandboxes; empty: the deployment's default."
    )

    objects = TemplateQuerySet.as_manager()

    class Meta:
        ordering = ["position", "name"]
        constraints = [models.UniqueConstraint(fields=["is_default"], condition=Q(is_default=True), name="one_default")]

    def __str__(self) -> str:
        return self.name

    def validate_constraints(self, exclude=None):
        # Making a template the default takes it from the one before (TemplateAdmin.save_model);
        # the database still holds one default at most.
        super().validate_constraints(exclude={*(exclude or ()), "is_default"})

    def definition(self) -> dict:
        """What a build is made of, in a canonical form."""
        return {
            "base_image": self.base_image,
            "apt_packages": list(self.apt_packages),
            "programs": list(self.programs),
            "pip_packages": list(self.pip_packages),
            "npm_packages": list(self.npm_packages),
            "build_commands": list(self.build_commands),
            "starter_files": dict(sorted(self.starter_files.items())),
            "resources": [self.cpu, self.memory_gb, self.disk_gb],
        }

    @property
    def version(self) -> str:
        canonical = json.dumps(self.definition(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def artifact_name(self) -> str:
        """The built version's name with every provider: ``<slug>-<hash of its definition>``."""
        return f"{self.slug}-{self.version}"

    def built_for(self, provider_name: str) -> bool:
        """Whether the build of the current version is ready on that provider."""
        ready = TemplateBuild.State.READY
        return self.builds.filter(provider=provider_name, version=self.version, state=ready).exists()

    def recipe(self) -> TemplateRecipe:
        return TemplateRecipe(
            name=self.artifact_name,
            base_image=self.base_image,
            cpu=self.cpu,
            memory_gb=self.memory_gb,
            disk_gb=self.disk_gb,
            apt_packages=tuple(self.apt_packages),
            programs=tuple(self.programs),
            pip_packages=tuple(self.pip_packages),
            npm_packages=tuple(self.npm_packages),
            commands=tuple(self.build_commands),
            starter_files=dict(self.starter_files),
        )


class TemplateBuild(models.Model):
    """One provider's build of one version of a template (``environments.builds``)."""

    class State(models.TextChoices):
        QUEUED = "queued", "Waiting for a worker"
        BUILDING = "building", "Building"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    template = models.ForeignKey(Template, on_delete=models.CASCADE, related_name="builds")
    provider = models.CharField(max_length=32)
    version = models.CharField(max_length=16)
    artifact = models.CharField(max_length=64, help_text="The snapshot (Daytona) or toolchain (local) it made.")
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    log = models.TextField(blank=True, help_text="The build's output, as it came (its last part when long).")
    error = models.TextField(blank=True)
    requested_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="Last sign of life of the worker building it: a stale one is built again."
    )
    attempts = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["-requested_at"]
        constraints = [
            models.UniqueConstraint(fields=["template", "provider", "version"], name="one_build_per_version")
        ]

    def __str__(self) -> str:
        return f"{self.artifact} on {self.provider}"
