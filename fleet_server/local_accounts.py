"""Account recovery on the server host: ``fleet-server users reset-password``.

It works on the database directly, so it needs no login (the only way back in
when every admin password is lost) and only someone who can read and write the
data directory can use it.  It may run while the server runs (SQLite in WAL mode
serializes the writes).  A reset signs the user out everywhere: a reset is often
done because the old password leaked, and a session opened with it must end too.
"""

from __future__ import annotations

import getpass
import secrets
import time
from dataclasses import dataclass

from edgefleet_contract.errors import NotFound

from .auth import hash_password
from .store.base import AuditEntry, Store


@dataclass(frozen=True)
class Reset:
    username: str
    generated: str | None
    """The new password when one was generated (shown once), else None."""
    tokens_revoked: int
    enabled: bool
    """The user was disabled and is enabled again."""


def reset_password(
    store: Store, username: str, password: str | None, *, enable: bool = False
) -> Reset:
    """Set ``username``'s password (a generated one when ``password`` is None)."""
    try:
        user = store.get_user(username)
    except NotFound:
        known = ", ".join(u.username for u in store.list_users()) or "none"
        raise NotFound(f"no user {username!r} (users: {known})") from None
    new = password if password is not None else secrets.token_urlsafe(12)
    store.update_user(
        username, password_hash=hash_password(new), disabled=False if enable else None
    )
    now = time.time()
    live = [t for t in store.list_api_tokens(username) if t.revoked_at is None]
    for token in live:
        store.revoke_api_token(token.id, now)
    store.append_audit(
        AuditEntry(
            ts=now,
            actor=f"local:{getpass.getuser()}",
            role="local",
            action="users.reset_password",
            target=username,
            source_ip="local",
            outcome="ok",
            detail={"tokens_revoked": len(live), "enabled": enable and user.disabled},
        )
    )
    return Reset(
        username=username,
        generated=None if password is not None else new,
        tokens_revoked=len(live),
        enabled=enable and user.disabled,
    )
