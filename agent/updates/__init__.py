"""Over-the-air updates on the device: TUF-verified, resumable, A/B slots, revertible.

    updater = Updater(data_dir, server_url, host=model_service, health=probe)
    updater.resume()                      # at start: finish or revert an interrupted update
    updater.run(desired.model, desired.version, desired.rollout_id)

:func:`active_model_path` is what the daemon serves at start.  The modules:
``machine`` (pure state machine), ``journal`` (its persisted record), ``trust``
(python-tuf client), ``fetch`` (resumable downloads), ``delta`` (bsdiff4),
``slots`` (model A/B slots), ``firmware`` (install handlers), ``boot`` and
``updater`` (the facade that does the I/O).
"""

from .boot import active_model_path, recover_at_boot
from .health import HealthTally
from .machine import HealthCounters
from .slots import ModelSlots

__all__ = [
    "HealthCounters",
    "HealthTally",
    "ModelSlots",
    "active_model_path",
    "recover_at_boot",
]
