"""A sandbox per (user, template): every sandbox from before templates was a Node.js one, made
from the image the default template describes, so each becomes that template's."""

import django.db.models.deletion

import sandboxes.models
from environments.shipped import TEMPLATES
from django.conf import settings
from django.db import migrations, models


def to_the_node_template(apps, schema_editor):
    Template = apps.get_model("environments", "Template")
    Sandbox = apps.get_model("sandboxes", "Sandbox")
    if Sandbox.objects.exists():
        node = Template.objects.filter(slug="nodejs").first()
        if node is None:  # the shipped templates were removed: the Node.js one is made again
            fields = next(fields for fields in TEMPLATES if fields["slug"] == "nodejs")
            node = Template.objects.create(**{**fields, "is_default": not Template.objects.filter(is_default=True).exists()})
        Sandbox.objects.update(template=node)


class Migration(migrations.Migration):
    dependencies = [
        ("environments", "0002_shipped_templates"),
        ("sandboxes", "0004_state_changes"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="sandbox",
            name="template",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="environments.template",
            ),
        ),
        migrations.RunPython(to_the_node_template, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="sandbox",
            name="template",
            field=models.ForeignKey(
                default=sandboxes.models.default_template_pk,
                help_text="What it was made from.",
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="environments.template",
            ),
        ),
        migrations.AlterField(
            model_name="sandbox",
            name="user",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT,
                related_name="sandboxes",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddField(
            model_name="sandbox",
            name="template_idle_minutes",
            field=models.PositiveIntegerField(
                blank=True, help_text="Its template's idle period when it was made; empty: none of its own.", null=True
            ),
        ),
        migrations.AddConstraint(
            model_name="sandbox",
            constraint=models.UniqueConstraint(fields=("user", "template"), name="one_sandbox_per_template"),
        ),
    ]
