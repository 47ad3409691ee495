"""Renderers of a Topology (core/topology.py): DOT for drawings, Prometheus text for the
metrics port. Pure functions of their arguments: no clock, no sockets; only ``dot.render``
runs a program (Graphviz's ``dot``)."""
