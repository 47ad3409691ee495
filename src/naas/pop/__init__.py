"""The PoPs: the network's CA, one-time invitations, the shared SQL store and the
HTTPS enrollment service a new member redeems its invitation at.

``ca``, ``invitations`` and ``addresses`` are pure; ``store`` talks SQL, ``server``
runs under asyncio (aiohttp) and ``client`` is the synchronous side used by the CLI.
"""
