"""The one module touching python-tuf's non-public names, checked on its own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tuf.api.exceptions import ExpiredMetadataError
from tuf.ngclient.updater import Updater

from agent.updates import tuf_compat
from edgefleet_contract.errors import TrustError

from .tuf_sim import RepoServer, TufRepo


@pytest.fixture
def server() -> Iterator[RepoServer]:
    repo = TufRepo()  # its root expires in a year, its timestamp in a day
    repo.publish()
    server = RepoServer(repo)
    yield server
    server.close()


def updater(tmp_path: Path, server: RepoServer) -> Updater:
    tmp_path.mkdir()
    return Updater(
        str(tmp_path),
        f"{server.url}/tuf/metadata/",
        target_base_url=f"{server.url}/tuf/targets/",
        bootstrap=server.repo.root_json().encode(),
    )


def test_installed_tuf_is_the_checked_major() -> None:
    tuf_compat.check_version()


def test_the_reference_time_decides_what_has_expired(tmp_path: Path, server: RepoServer) -> None:
    late = updater(tmp_path / "late", server)
    tuf_compat.set_reference_time(late, time.time() + 2 * 365 * 86400)
    with pytest.raises(ExpiredMetadataError):
        late.refresh()
    # Positive control: judged at today's time the same metadata is current.
    now = updater(tmp_path / "now", server)
    tuf_compat.set_reference_time(now, time.time())
    now.refresh()
    assert (tmp_path / "now" / "timestamp.json").exists()


def test_an_updater_without_the_private_field_is_refused_by_name() -> None:
    with pytest.raises(TrustError, match="cannot set the reference time"):
        tuf_compat.set_reference_time(object(), time.time())  # type: ignore[arg-type]
