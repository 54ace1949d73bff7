"""Doors that exist only for sandboxes whose provider has none of its own (the local provider):
the preview relay (:mod:`.preview`) and the SSH gateway (:mod:`.ssh_gateway`). Like every door
they call :mod:`sandboxes.services` only; the capabilities they need are
``Capability.PREVIEW_RELAY`` and ``Capability.SSH_GATEWAY`` of the provider contract."""
