"""The relay's own pages (nothing listens, not running, sign in...): small, static, no script."""

from __future__ import annotations

import html

PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


def page(
    status: int, title: str, hint_html: str, *, portal_url: str = ""
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body of a page; ``hint_html`` is trusted markup."""
    back = (
        f'<p><a href="{html.escape(portal_url)}/sandbox-portal/">Back to the sandbox portal</a></p>'
        if portal_url
        else ""
    )
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}"
        "code{background:#f2f2f2;padding:.1em .3em;border-radius:3px}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{hint_html}</p>{back}</body></html>"
    ).encode()
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"content-security-policy", PAGE_CSP.encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
    ]
    if status in (429, 503):
        headers.append((b"retry-after", b"5"))
    return status, headers, body


def nothing_listening(port: int) -> tuple[str, str]:
    return (
        f"Nothing is listening on port {port}",
        f"Start your app on port {port} in your sandbox's terminal (for example "
        f"<code>npm run dev -- --host 0.0.0.0 --port {port}</code> or <code>python3 -m http.server {port}</code>), "
        "then reload this page.",
    )


def not_running() -> tuple[str, str]:
    return "This sandbox is not running", "Open it from the sandbox portal, then reload this page."
