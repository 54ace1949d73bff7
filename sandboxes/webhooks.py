"""The door for providers' webhooks, mounted on the JSON API under ``/api/webhooks/``.

No session and no CSRF: a webhook is authenticated by its signature alone, checked by the
service on the exact bytes received. Errors leave as ``SandboxError``, which the API renders
in its usual shape.
"""

from __future__ import annotations

from django.http import HttpRequest
from ninja import Router, Schema, Status

from .services.webhooks import daytona_webhook_receive

router = Router(auth=None, tags=["webhooks"])


class WebhookErrorDetail(Schema):
    code: str
    message: str


class WebhookErrorOut(Schema):
    error: WebhookErrorDetail


@router.post(
    "/daytona",
    response={204: None, 400: WebhookErrorOut, 404: WebhookErrorOut, 429: WebhookErrorOut, 503: WebhookErrorOut},
    summary="Receive a Daytona webhook",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "description": "A Daytona event as Svix delivers it (sandbox.created, "
                        "sandbox.state.updated; other events are accepted and ignored).",
                        "properties": {
                            "event": {"type": "string"},
                            "timestamp": {"type": "string", "format": "date-time"},
                            "id": {"type": "string"},
                            "organizationId": {"type": "string"},
                        },
                    }
                }
            },
        }
    },
)
def daytona_webhook(request: HttpRequest):
    """A Svix-signed event from Daytona (headers ``svix-id``, ``svix-timestamp``,
    ``svix-signature``). 204 when taken in, a repeated event id too (it changes nothing);
    400 ``invalid_signature`` for a forged, unsigned, altered or stale one; 404
    ``not_configured`` without ``DAYTONA_WEBHOOK_SECRET``; 503 when the sandbox cannot be read
    from Daytona now (Svix delivers it again later)."""
    daytona_webhook_receive(body=request.body, headers=request.headers)
    return Status(204, None)
