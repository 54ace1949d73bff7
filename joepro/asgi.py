import logging
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "joepro.settings")

django_asgi_app = get_asgi_application()

# Imported once the app registry is loaded (consumers import models).
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from joepro.logging import RedactSecrets  # noqa: E402
from joepro.request_context import ConnectionContext, UserContext  # noqa: E402
from sandboxes.origins import ExactOriginValidator  # noqa: E402
from sandboxes.preview.hosts import host_of, parse_host  # noqa: E402
from sandboxes.preview.relay import PreviewRelay  # noqa: E402
from sandboxes.routing import websocket_urlpatterns  # noqa: E402

# The preview handshake's one-time code is in its URL; access logs show it blanked.
logging.getLogger("uvicorn.access").addFilter(RedactSecrets())


class PreviewSites:
    """Requests for a preview host (``<port>-<sandbox>.<preview host>``) go to the preview
    relay, every other request to the portal: the user's apps never share the portal's site."""

    def __init__(self, portal, relay):
        self.portal = portal
        self.relay = relay

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket") and parse_host(host_of(scope)) is not None:
            return await self.relay(scope, receive, send)
        return await self.portal(scope, receive, send)


def build_application(http=None) -> ConnectionContext:
    """The whole ASGI application; ``http`` replaces the portal's Django handler (tests)."""
    portal = ProtocolTypeRouter(
        {
            "http": http or django_asgi_app,
            # Browsers send cookies on cross-site websocket upgrades too: only the portal's own
            # exact origin (or a trusted one) may open one, and the session says who it is.
            "websocket": ExactOriginValidator(AuthMiddlewareStack(UserContext(URLRouter(websocket_urlpatterns)))),
        }
    )
    # Every request and websocket gets its id before anything logs (see joepro.request_context).
    return ConnectionContext(PreviewSites(portal=portal, relay=PreviewRelay()))


application = build_application()
