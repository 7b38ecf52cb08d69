"""Rollout drivers of several processes on one store: the lease holder runs the engines, any
API replica acts on them, and a save never overwrites another process's newer one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edgefleet_contract.errors import StoreError
from fleet_server.rollouts.driver import RolloutDriver
from fleet_server.rollouts.persist import load, save
from fleet_server.store import open_store
from fleet_server.store.base import Store

from .rollout_sim import plan
from .test_rollout_driver import T0, TableResolver


@pytest.fixture
def stores(store_url: str) -> Iterator[tuple[Store, Store]]:
    one, two = open_store(store_url), open_store(store_url)
    for i in range(4):
        d = f"sh-{i}"
        one.create_device(d, name=d, tags={}, now=T0)
        one.add_certificate(d, serial=2000 + i, not_after=T0 + 1e6, now=T0)
        one.set_presence(d, online=True, ts=T0)
    yield one, two
    one.close()
    two.close()


def driver(store: Store) -> RolloutDriver:
    return RolloutDriver(store, None, resolver=TableResolver(), interval_s=3600.0, shared=True)


def test_a_save_over_a_version_someone_else_replaced_is_refused(
    stores: tuple[Store, Store],
) -> None:
    one, two = stores
    rid = driver(two).create(plan(), actor="api-2", now=T0).state.id
    stale, fresh = load(one, rid), load(two, rid)
    seen = stale.state.updated_at
    fresh.pause(T0 + 5)
    save(two, fresh, expect_updated_at=seen)  # positive control: over the version it read
    stale.tick(T0 + 6)
    with pytest.raises(StoreError, match="changed meanwhile"):
        save(one, stale, expect_updated_at=seen)
    assert load(one, rid).status == "paused"  # nothing of the stale save landed


def test_the_holder_takes_in_a_verb_made_through_another_replica(
    stores: tuple[Store, Store],
) -> None:
    one, two = stores
    holder, api = driver(one), driver(two)
    holder.start()
    try:
        rid = api.create(plan(), actor="api-2", now=T0).state.id
        assert rid not in api._live  # the API replica keeps no copy
        holder.step(T0 + 1)
        assert holder.get(rid).status != "paused"
        api.act(rid, "pause", actor="operator", now=T0 + 2)
        holder.step(T0 + 3)  # reads the store: the pause is there, and it stays
        assert holder.get(rid).status == "paused"
        assert load(two, rid).status == "paused"
    finally:
        holder.stop()
