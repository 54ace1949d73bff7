"""Template versions with the providers: prepared once per provider before anyone launches
from them (``environments.builds`` decides when; this is the call)."""

from __future__ import annotations

from sandboxes.providers import get_provider
from sandboxes.providers.templates import BuildLog, TemplateRecipe


def template_prepare(*, provider_name: str, recipe: TemplateRecipe, on_log: BuildLog) -> None:
    """Prepare ``recipe`` with that provider (blocking, minutes on a first Daytona build;
    see ``TemplateMethods.prepare_template``). Raises ``ProviderError`` when the build failed."""
    get_provider(provider_name).prepare_template(recipe, on_log=on_log)


def template_prepared(*, provider_name: str, name: str) -> bool:
    """Whether that provider has the template version ``name`` ready now."""
    return get_provider(provider_name).template_prepared(name)
