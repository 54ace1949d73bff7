"""The system check that keeps previews off the portal's site."""

import pytest

from sandboxes.checks import check_preview_site, registrable_domain


@pytest.mark.parametrize(
    ("host", "site"),
    [
        ("3000-abc.localhost", "3000-abc.localhost"),  # each subdomain of localhost is a site
        ("localhost", "localhost"),
        ("127.0.0.1", "127.0.0.1"),
        ("portal.example.com", "example.com"),
        ("3000-x.preview.example.com", "example.com"),
        ("3000-x.a.github.io", "a.github.io"),  # a public suffix of its own
    ],
)
def test_sites_follow_the_public_suffix_list(host, site):
    assert registrable_domain(host) == site


def test_the_default_keeps_previews_on_sites_of_their_own():
    assert check_preview_site() == []


def test_previews_under_the_portals_domain_are_warned_about(settings):
    settings.PORTAL_URL = "https://portal.example.com"
    settings.SANDBOX_PREVIEW_URL = "https://preview.example.com"
    assert [problem.id for problem in check_preview_site()] == ["sandboxes.W010"]

    settings.SANDBOX_PREVIEW_URL = "https://example-usercontent.com"
    settings.ALLOWED_HOSTS = ["portal.example.com"]
    assert check_preview_site() == []

    settings.ALLOWED_HOSTS = ["portal.example.com", ".example-usercontent.com"]
    assert [problem.id for problem in check_preview_site()] == ["sandboxes.W010"]


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "ftp://preview.example.com", "https://x.example/previews"])
def test_a_preview_url_must_be_a_scheme_and_a_host_name(settings, url):
    settings.SANDBOX_PREVIEW_URL = url
    assert [problem.id for problem in check_preview_site()] == ["sandboxes.E010"]
