"""The emulated organisation: sandboxes, their state machine, SSH and preview tokens.

Everything here is synchronous and guarded by one lock, so the aiohttp handlers (event-loop
thread) and the test-facing methods (any thread) can share it. Results are plain dicts in
the API's camelCase wire shape; refusals raise ``ApiError`` with the server's message.

:class:`SandboxStore` is put together from one part per capability: the tables and state
machine (:mod:`.core`), the lifecycle (:mod:`.lifecycle`), listing (:mod:`.listing`) and
access tokens (:mod:`.tokens`); the records they share are in :mod:`.records`.
"""

from __future__ import annotations

from .lifecycle import LifecycleMixin
from .listing import ListingMixin
from .tokens import TokensMixin


class SandboxStore(LifecycleMixin, ListingMixin, TokensMixin):
    """One organisation's sandboxes and access tokens."""
