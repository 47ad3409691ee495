"""The network-namespace lab used by `naas demo`, the benchmarks and the end-to-end tests.

See `naas.lab.netns` for how a lab is built and torn down.
"""

from naas.lab.netns import DEMO_SITES, Lab, LabError, LabHost, cleanup_stale, remove_saved_labs

__all__ = ["DEMO_SITES", "Lab", "LabError", "LabHost", "cleanup_stale", "remove_saved_labs"]
