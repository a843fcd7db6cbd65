"""The runtime core: scheduler, run lifecycle, state machine, and the store port."""
