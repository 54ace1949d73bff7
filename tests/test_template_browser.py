"""Choosing a template on the portal, in headless Chromium against the fake Daytona: the
choice, and at the cap the sandboxes to open or the reset behind a typed name."""

import re

import pytest
from playwright.sync_api import expect

from environments import builds
from environments.models import Template, TemplateBuild
from environments.shipped import TEMPLATES
from tests.test_portal_browser import browser_page, console_errors, expect_sandbox_ready, sign_up  # noqa: F401

pytestmark = pytest.mark.browser


def shipped_and_built(*slugs: str) -> None:
    """The shipped templates (a live server's database starts empty), those named built."""
    for fields in TEMPLATES:
        Template.objects.update_or_create(slug=fields["slug"], defaults=fields)
    for slug in slugs:
        template = Template.objects.get(slug=slug)
        build = TemplateBuild.objects.create(
            template=template, provider="daytona", version=template.version, artifact=template.artifact_name
        )
        assert builds.run_build(build.pk).state == TemplateBuild.State.READY


@pytest.fixture
def python_built(live_server, daytona):
    """Before the browser starts: the ORM refuses to run beside Playwright's event loop."""
    shipped_and_built("python")


def test_choose_a_template_then_at_the_cap_reset_to_another_after_typing_its_name(
    python_built,
    browser_page,  # noqa: F811
    console_errors,  # noqa: F811
):
    page = browser_page
    page.goto("/accounts/signup/?next=/sandbox-portal/")
    sign_up(page)
    choice = page.get_by_role("group", name="Environment")
    expect(choice.get_by_role("radio")).to_have_count(2)  # the default, and the one built
    expect(choice.get_by_role("radio", name=re.compile("Node.js"))).to_be_checked()

    choice.get_by_role("radio", name=re.compile("Python")).check()
    page.get_by_role("button", name="Open Dev Sandbox").click()
    expect_sandbox_ready(page)
    page.get_by_role("button", name="Stay here").click()
    expect(page.locator("#sandbox-name")).to_have_text(re.compile(r"-python$"))
    python_name = page.locator("#sandbox-name").text_content()

    page.goto("/sandbox-portal/")
    page.get_by_role("group", name="Environment").get_by_role("radio", name=re.compile("Node.js")).check()
    page.get_by_role("button", name="Open Dev Sandbox").click()
    error = page.locator("#launch-error")
    expect(error).to_contain_text("as many as you may keep")
    expect(page.get_by_role("button", name=f"Open Python ({python_name})")).to_be_visible()

    page.get_by_label(re.compile("Type its name to confirm")).fill("not its name")
    page.get_by_role("button", name="Reset and open").click()
    expect(error).to_contain_text("to confirm that its files will be deleted")

    page.get_by_role("button", name="Try again").wait_for(state="visible")
    page.goto("/sandbox-portal/")
    page.get_by_role("group", name="Environment").get_by_role("radio", name=re.compile("Node.js")).check()
    page.get_by_role("button", name="Open Dev Sandbox").click()
    page.get_by_label(re.compile("Type its name to confirm")).fill(python_name)
    page.get_by_role("button", name="Reset and open").click()
    expect(page.get_by_role("heading", name="Your sandbox is ready")).to_be_visible(timeout=60_000)
    page.get_by_role("button", name="Stay here").click()
    expect(page.locator("#sandbox-name")).to_have_text(re.compile(r"-user-\d+$"))  # the Node.js one
    # The browser logs the refusals the journey asked for (the cap's 409s, the wrong name's 400);
    # nothing else may show.
    expected = re.compile(r"^Failed to load resource: the server responded with a status of (409|400) ")
    assert [error for error in console_errors if not expected.match(error)] == []
