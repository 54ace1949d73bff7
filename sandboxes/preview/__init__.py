"""Previews: what a sandbox serves on a port, relayed by the portal on a site of its own.

Every provider's previews go through this relay, so users never meet a provider's pages:

``<port>-<sandbox id>.<preview host>`` (``SANDBOX_PREVIEW_URL``; by default subdomains of
``localhost``, which browsers resolve to loopback and treat as sites of their own)
    The app on that port of the sandbox (:mod:`.relay`): HTTP, streamed both ways, and
    websockets. The user's code runs on that site, never on the portal's, so it can neither
    read the portal's cookies, nor act with its session, nor pose as its pages in the address
    bar.

``/sandboxes/<id>/preview/?port=<port>`` on the portal (:mod:`.door`)
    For the signed-in owner: a one-time code, redeemed on the preview's site for a cookie
    scoped to that one host (:mod:`.sessions`). The portal's own cookies are never needed there.

Visitors without that cookie are sent to the portal to sign in; whoever is signed in but is
not the owner gets 404 at the door.
"""
