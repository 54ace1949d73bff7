from django.urls import path

from . import consumers

websocket_urlpatterns = [
    path(
        "ws/sandboxes/<str:remote_id>/terminal/",
        consumers.TerminalConsumer.as_asgi(),
        name="sandbox-terminal-socket",
    ),
]
