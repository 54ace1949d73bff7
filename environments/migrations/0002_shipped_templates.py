"""The templates a new deployment starts with. Node.js is the default: what every sandbox was
before templates (Node.js 20 on node:20-bookworm, 2 CPUs, 4 GB, 8 GB)."""

from django.db import migrations

from environments.shipped import TEMPLATES


def add_templates(apps, schema_editor):
    Template = apps.get_model("environments", "Template")
    for fields in TEMPLATES:
        Template.objects.update_or_create(slug=fields["slug"], defaults=fields)


def remove_templates(apps, schema_editor):
    apps.get_model("environments", "Template").objects.filter(slug__in=[t["slug"] for t in TEMPLATES]).delete()


class Migration(migrations.Migration):
    dependencies = [("environments", "0001_initial")]

    operations = [migrations.RunPython(add_templates, remove_templates)]
