"""The model packages edgefleet ships (``python -m models.build`` makes them), as package data.

The factory ``digits`` model a training run starts from when nothing newer is
registered, the simulator's default model and the demo's starting point.  They
install with the wheel, so an installed server finds them the same way a
source checkout does.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["DIST"]

DIST = Path(str(files(__name__)))
"""The directory holding the shipped ``*.efpkg`` files."""
