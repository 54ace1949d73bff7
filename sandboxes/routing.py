from django.urls import path

from . import consumers, live_consumer

websocket_urlpatterns = [
    path(
        "ws/sandboxes/<str:remote_id>/terminal/",
        consumers.TerminalConsumer.as_asgi(),
        name="sandbox-terminal-socket",
    ),
    path("ws/sandbox/events/", live_consumer.SandboxEventsConsumer.as_asgi(), name="sandbox-events-socket"),
]
