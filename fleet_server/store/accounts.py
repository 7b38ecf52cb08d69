"""Users, API tokens and the append-only audit log."""

from __future__ import annotations

from typing import Any

from edgefleet_contract.errors import NotFound, StoreError

from ._conn import INTEGRITY_ERRORS, Connections
from .base import ApiToken, AuditEntry, AuditFilter, Page, Role, User
from .rows import from_row, insert_sql, json_or, sorted_json, to_row

_TOKEN_COLUMNS = ("id", "username", "name", "token_hash", "created_at", "expires_at")
_AUDIT_COLUMNS = ("ts", "actor", "role", "action", "target", "source_ip", "outcome", "detail")


class AccountTables(Connections):
    def record_login_failure(self, source: str, ts: float, *, forget_before: float) -> None:
        """One failed login from ``source``; its failures before ``forget_before`` go."""
        with self._tx() as conn:
            conn.execute(
                "DELETE FROM login_failures WHERE source = ? AND ts < ?", (source, forget_before)
            )
            conn.execute("INSERT INTO login_failures (source, ts) VALUES (?, ?)", (source, ts))

    def login_failures(self, source: str, *, since: float) -> list[float]:
        rows = self._conn().execute(
            "SELECT ts FROM login_failures WHERE source = ? AND ts >= ? ORDER BY ts",
            (source, since),
        )
        return [float(r[0]) for r in rows]

    def clear_login_failures(self, source: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM login_failures WHERE source = ?", (source,))

    def create_user(self, username: str, *, role: Role, password_hash: str, now: float) -> None:
        try:
            with self._tx() as conn:
                conn.execute(
                    "INSERT INTO users (username, role, password_hash, created_at, disabled) "
                    "VALUES (?, ?, ?, ?, 0)",
                    (username, role, password_hash, now),
                )
        except INTEGRITY_ERRORS:
            raise StoreError(f"a user named {username!r} already exists") from None

    def get_user(self, username: str) -> User:
        row = self._found(
            "SELECT * FROM users WHERE username = ?", (username,), f"no user {username!r}"
        )
        return _user(row)

    def list_users(self) -> list[User]:
        return [_user(r) for r in self._conn().execute("SELECT * FROM users ORDER BY username")]

    def update_user(
        self,
        username: str,
        *,
        role: Role | None = None,
        password_hash: str | None = None,
        disabled: bool | None = None,
    ) -> User:
        changes = {
            "role": role,
            "password_hash": password_hash,
            "disabled": None if disabled is None else int(disabled),
        }
        sets = {k: v for k, v in changes.items() if v is not None}
        if sets:
            with self._tx() as conn:
                cur = conn.execute(
                    f"UPDATE users SET {', '.join(f'{k} = ?' for k in sets)} WHERE username = ?",
                    (*sets.values(), username),
                )
                if cur.rowcount == 0:
                    raise NotFound(f"no user {username!r}")
        return self.get_user(username)

    def create_api_token(self, token: ApiToken) -> None:
        with self._tx() as conn:
            conn.execute(insert_sql("api_tokens", _TOKEN_COLUMNS), to_row(token, _TOKEN_COLUMNS))

    def find_api_token(self, token_hash: str) -> ApiToken | None:
        row = self._one("SELECT * FROM api_tokens WHERE token_hash = ?", (token_hash,))
        return None if row is None else ApiToken(**dict(row))

    def list_api_tokens(self, username: str | None = None) -> list[ApiToken]:
        if username is None:
            rows = self._conn().execute("SELECT * FROM api_tokens ORDER BY created_at")
        else:
            rows = self._conn().execute(
                "SELECT * FROM api_tokens WHERE username = ? ORDER BY created_at", (username,)
            )
        return [ApiToken(**dict(r)) for r in rows]

    def revoke_api_token(self, token_id: str, now: float) -> None:
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
                (now, token_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no API token {token_id!r}")

    def revoke_user_tokens(self, username: str, now: float) -> int:
        """Revoke every live token and console session of ``username``; how many were live."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE api_tokens SET revoked_at = ? WHERE username = ? AND revoked_at IS NULL",
                (now, username),
            )
            return int(cur.rowcount)

    def touch_api_token(self, token_id: str, now: float) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE api_tokens SET last_used = ? WHERE id = ?", (now, token_id))

    # ---------------------------------------------------------------- audit --

    def append_audit(self, entry: AuditEntry) -> None:
        with self._tx() as conn:
            conn.execute(
                insert_sql("audit", _AUDIT_COLUMNS),
                to_row(entry, _AUDIT_COLUMNS, detail=sorted_json),
            )

    def list_audit(
        self,
        *,
        offset: int = 0,
        limit: int = 100,
        actor: str | None = None,
        filters: AuditFilter | None = None,
    ) -> Page[AuditEntry]:
        f = filters or AuditFilter()
        clauses = [
            (actor, "actor = ?"),
            (f.action, "action = ?"),
            (f.target, self.dialect.contains("target")),
            (f.outcome, "outcome = ?"),
            (f.since, "ts >= ?"),
            (f.until, "ts < ?"),
        ]
        used = [(value, sql) for value, sql in clauses if value is not None]
        where = ("WHERE " + " AND ".join(sql for _, sql in used)) if used else ""
        params: list[object] = [value for value, _ in used]
        conn = self._conn()
        total = int(conn.execute(f"SELECT COUNT(*) FROM audit {where}", params).fetchone()[0])
        rows = conn.execute(
            f"SELECT * FROM audit {where} ORDER BY id DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        ).fetchall()
        items = [from_row(AuditEntry, r, detail=json_or("{}")) for r in rows]
        return Page(items, total)


def _user(row: Any) -> User:
    return from_row(User, row, disabled=bool)
