"""The artifact registry's table: one row per registered model package or firmware bundle.

``(kind, name, version, flavor)`` is unique: a version, once registered, means
one set of bytes forever.  Re-registering the same bytes is idempotent; other
bytes under the same coordinates are refused (the API answers 409).
"""

from __future__ import annotations

import json
from typing import Any

from edgefleet_contract.errors import StoreError

from ._conn import Connections
from .base import Artifact, Page
from .rows import from_row, insert_sql, json_or, sorted_json, to_row

_COLUMNS = (
    "kind",
    "name",
    "version",
    "flavor",
    "runtime",
    "hardware",
    "sha256",
    "size",
    "filename",
    "target_path",
    "created_at",
    "uploaded_by",
    "lineage",
)
"""Every column but the id, which the database assigns."""


class ArtifactTables(Connections):
    def add_artifact(self, artifact: Artifact) -> Artifact:
        """Insert ``artifact`` (its ``id`` is ignored) and return it with the id it got.

        The same coordinates with the same sha256 return the existing row.
        """
        a = artifact
        with self._tx() as conn:
            row = conn.execute(
                "SELECT * FROM artifacts WHERE kind = ? AND name = ? AND version = ? "
                "AND flavor = ?",
                (a.kind, a.name, a.version, a.flavor),
            ).fetchone()
            if row is not None:
                existing = _artifact(row)
                if existing.sha256 != a.sha256:
                    raise StoreError(
                        f"{a.kind} {existing.spec} is already registered with sha256 "
                        f"{existing.sha256[:16]}...; a version never changes its bytes "
                        "(publish a new version)"
                    )
                return existing
            cur = conn.execute(
                insert_sql("artifacts", _COLUMNS) + " RETURNING id",
                to_row(a, _COLUMNS, hardware=_json_list, lineage=sorted_json),
            )
            new_id = int(cur.fetchone()[0])
        return self.get_artifact(new_id)

    def get_artifact(self, artifact_id: int) -> Artifact:
        row = self._found(
            "SELECT * FROM artifacts WHERE id = ?",
            (artifact_id,),
            f"no artifact with id {artifact_id}",
        )
        return _artifact(row)

    def find_artifacts(
        self,
        *,
        kind: str | None = None,
        name: str | None = None,
        version: str | None = None,
        flavor: str | None = None,
        sha256: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[Artifact]:
        """Artifacts matching every given filter, newest first."""
        filters = {
            "kind": kind,
            "name": name,
            "version": version,
            "flavor": flavor,
            "sha256": sha256,
        }
        given = {k: v for k, v in filters.items() if v is not None}
        where = " AND ".join(f"{k} = ?" for k in given) or "1 = 1"
        params: list[Any] = list(given.values())
        conn = self._conn()
        total = int(
            conn.execute(f"SELECT COUNT(*) FROM artifacts WHERE {where}", params).fetchone()[0]
        )
        rows = conn.execute(
            f"SELECT * FROM artifacts WHERE {where} ORDER BY id DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return Page([_artifact(r) for r in rows], total)


def _artifact(row: Any) -> Artifact:
    return from_row(Artifact, row, id=int, hardware=_hardware, size=int, lineage=json_or("{}"))


def _hardware(text: str | None) -> tuple[str, ...]:
    return tuple(json.loads(text or "[]"))


def _json_list(values: tuple[str, ...]) -> str:
    return json.dumps(list(values))
