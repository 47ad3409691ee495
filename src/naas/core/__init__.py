"""Pure protocol logic: no I/O, no clock, no randomness (all passed in)."""
