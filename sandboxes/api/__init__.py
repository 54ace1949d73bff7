"""The JSON API under ``/api/``: parse -> authorise -> call a service -> respond.

- :mod:`.core`      the API, its session auth, every error in one shape
- :mod:`.schemas`   the bodies' shapes (the OpenAPI schema)
- :mod:`.out`       rows and records into JSON objects
- :mod:`.launch`    the launcher and the owner's controls
- :mod:`.dashboard` the dashboard, preferences, the access ledger, the timeline
- ``/api/webhooks/``: providers' webhooks (:mod:`sandboxes.webhooks`)
- ``/api/sandbox/usage``: the user's usage, cost, budget and resources (:mod:`usage.api`)
"""

from sandboxes.webhooks import router as webhooks_router
from usage.api import router as usage_router

from . import dashboard, launch  # noqa: F401  (their endpoints register on the API)
from .core import api

api.add_router("/webhooks", webhooks_router)
api.add_router("/sandbox", usage_router)

__all__ = ["api"]
