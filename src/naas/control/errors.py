"""The use cases' failures: one readable line each, and the status the API gives it."""

from __future__ import annotations


class ControlError(Exception):
    """A request the use case cannot carry out; ``str(error)`` says why, on one line."""

    status = 400


class Invalid(ControlError):
    """Bad input: a name, an address, a value out of range."""

    status = 400


class Forbidden(ControlError):
    """Understood, and refused (an invitation used, a certificate revoked)."""

    status = 403


class NotFound(ControlError):
    status = 404


class Conflict(ControlError):
    """The request contradicts the network's state (the client exists, a PoP, ...)."""

    status = 409


class Unavailable(ControlError):
    """The network cannot do it now (no address left)."""

    status = 503
