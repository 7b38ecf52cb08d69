"""The login throttle shared by API replicas: failed logins are rows in the database, so a
guesser that spreads its attempts over two replicas is throttled as on one."""

from __future__ import annotations

from fleet_server.auth import LoginThrottle
from fleet_server.store.base import Store


def test_failures_on_one_replica_throttle_the_other(store: Store) -> None:
    one = LoginThrottle(3, window_s=60.0, shared=store)
    two = LoginThrottle(3, window_s=60.0, shared=store)
    one.failed("10.0.0.9")
    two.failed("10.0.0.9")
    assert one.retry_after("10.0.0.9") == 0 and two.retry_after("10.0.0.9") == 0  # below limit
    one.failed("10.0.0.9")
    assert two.retry_after("10.0.0.9") > 0  # the third failure, made on the other replica
    assert two.retry_after("10.0.0.10") == 0  # positive control: another source logs in
    two.succeeded("10.0.0.9")
    assert one.retry_after("10.0.0.9") == 0  # a success anywhere forgets it everywhere


def test_a_repeat_offender_waits_longer_each_time_across_replicas(store: Store) -> None:
    one = LoginThrottle(2, window_s=60.0, shared=store)
    two = LoginThrottle(2, window_s=60.0, shared=store)
    one.failed("10.0.0.7")
    two.failed("10.0.0.7")
    first = one.retry_after("10.0.0.7")
    assert 0 < first <= 60
    one.failed("10.0.0.7")
    two.failed("10.0.0.7")  # fills the window again: the second strike doubles the wait
    assert two.retry_after("10.0.0.7") > first
    assert len(store.login_failures("10.0.0.7", since=0)) == 4
