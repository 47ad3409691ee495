"""The daemon: thin drivers around the sans-IO core.

`tap` (inside: the virtual Ethernet adapter) and `udp` (outside: the underlay) are the
two I/O seams, each a small Protocol with an in-memory twin; `netconf` sets addresses,
MTU and link state over netlink. The runner moves batches between them and `NodeCore`.
"""
