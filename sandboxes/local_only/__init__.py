"""Doors that exist only for sandboxes whose provider has none of its own (the local provider):
the SSH gateway (:mod:`.ssh_gateway`). Like every door it calls :mod:`sandboxes.services` only;
the capabilities it needs are ``Capability.SSH_GATEWAY``, ``Capability.PREVIEW_RELAY`` (port
forwards) and ``Capability.PROCESS`` of the provider contract."""
