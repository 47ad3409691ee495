"""NaaS: an encrypted, full-mesh, layer-2 overlay network (see docs/design.md)."""

__version__ = "0.1.0"
