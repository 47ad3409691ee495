"""The use cases of a network, over the PoP store: one layer, called by the CLI
(cli/admin.py) and by the REST API (pop/api.py) alike, with no argparse and no HTTP in it.

    network.py     PopNetwork: what every use case works with (config, store, CA key, clock)
    setup.py       init: the CA, the PoPs' identities, the store
    members.py     clients, invitations, groups, revocation, API tokens
    enrollment.py  an invitation redeemed; a certificate renewed
    apply.py       naas.toml compared with the store, and the difference applied
    policy.py      the network's policy: shown, replaced, and flows traced through it

Failures are ``ControlError``s (errors.py) with one line of text and the HTTP status the
API answers with; the CLI prints the line and exits 2.
"""
