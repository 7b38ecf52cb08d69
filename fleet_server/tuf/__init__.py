"""The TUF repository the fleet server publishes (python-tuf Metadata API)."""

from .repository import ONLINE_ROLES, Lifetimes, TufRepository, check_root_successor

__all__ = ["ONLINE_ROLES", "Lifetimes", "TufRepository", "check_root_successor"]
