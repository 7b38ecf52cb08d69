"""``fleet-server demo``: the whole edge MLOps loop on one machine (see :mod:`.loop`)."""

from .loop import DEMO_PASSWORD, Options, run_demo

__all__ = ["DEMO_PASSWORD", "Options", "run_demo"]
