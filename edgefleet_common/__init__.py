"""Process plumbing every edgefleet program shares, none of it wire contract.

The MQTT session both sides build on (:mod:`.mqtt`), long-lived daemon threads
and interval loops (:mod:`.background`), reconnect backoff
(:mod:`.backoff`), settings files and environment overrides (:mod:`.config`),
how the command lines end and their common options (:mod:`.cli`), structured
and redacted logging (:mod:`.logs`), owner-only files (:mod:`.private`),
open-file limits (:mod:`.fdlimit`), loopback ports for services that cannot
bind port 0 (:mod:`.ports`) and every touch of Flower's non-public names
(:mod:`.flower_compat`).  What devices and the server must agree on byte for
byte lives in :mod:`edgefleet_contract`; this package may import that one and
nothing else of edgefleet's.
"""

# The public surface is these modules (each is imported where it is used, so
# importing the package costs nothing).
__all__ = [
    "background",
    "backoff",
    "cli",
    "config",
    "fdlimit",
    "flower_compat",
    "logs",
    "mqtt",
    "ports",
    "private",
]
