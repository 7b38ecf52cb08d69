"""Ingest on PostgreSQL: readings/s stored through the real broker, as a ratio to a bare
paho subscriber on the same publishers in the same round, beside SQLite's ratio from the
same round.  ``bench_ingest``'s publishers (a process of their own, connected before
the clock starts), payloads and timing (signal to publish to last commit, so a ratio
errs low); PostgreSQL is a private cluster
(initdb in a temp dir, fsync off as in the tests: the server's own commit path, not the
disk, is measured).  Three rounds, each with a fresh bare run and fresh stores: the
mean and the worst round.  One ingest worker; several workers sharing the stream
(MQTT shared subscriptions) are not part of this run.  Each round's note gives the
machine's 1-minute load average at its end: other work on the 2 cores moves the bare
rate and both ratios (SQLite's was 0.63-0.69 on a quiet machine, 0.45 at a load of
~17).  An ingest batch is one transaction on PostgreSQL, pipelined from BEGIN to
COMMIT, of one statement (the new batch ids, their rows, rollups and the devices'
last-seen times): one round trip, where it was two (and before that five in two
transactions).  The ingest pauses Python's cyclic garbage collector while it decodes
and writes a batch.  Before these two the row read 0.46 (worst 0.37); four runs of
each, alternately on this machine at a load of 3-8, gave 0.38-0.57 (mean 0.46) before
and 0.52-0.74 (mean 0.62) after."""

from __future__ import annotations

import os
import statistics

from tests.pgserver import PgServer

from ._lab import Lab
from .bench_ingest import DEVICES, READINGS, bare_rate, fleet_payloads, fresh, ingest_rate

ROUNDS = 3


def run() -> list[dict[str, object]]:
    lab = Lab()
    pg = PgServer().start()
    pg_ratio: list[float] = []
    sq_ratio: list[float] = []
    notes: list[str] = []
    try:
        base = fleet_payloads()
        sent = sum(len(v) for v in base.values())
        for r in range(ROUNDS):
            bare, got = bare_rate(lab, fresh(base, f"bare{r}"))
            sq, sq_stored = ingest_rate(lab, fresh(base, f"sq{r}"))
            with pg.database() as dsn:
                pgr, pg_stored = ingest_rate(lab, fresh(base, f"pg{r}"), dsn)
            pg_ratio.append(pgr / bare)
            sq_ratio.append(sq / bare)
            notes.append(
                f"bare {bare:,.0f} ({got}/{sent}), PostgreSQL {pgr:,.0f} ({pg_stored}/{sent}), "
                f"SQLite {sq:,.0f} ({sq_stored}/{sent}), load {os.getloadavg()[0]:.1f}"
            )
    finally:
        pg.destroy()
        lab.close()
    return [
        {
            "benchmark": "ingest readings/s, PostgreSQL / bare paho",
            "ratio (mean)": f"{statistics.mean(pg_ratio):.2f}",
            "worst": f"{min(pg_ratio):.2f}",
            "SQLite / bare paho (mean)": f"{statistics.mean(sq_ratio):.2f}",
            "SQLite worst": f"{min(sq_ratio):.2f}",
            "note": f"{ROUNDS} rounds, QoS 1, {DEVICES} devices x {READINGS} readings, one "
            f"ingest worker; readings/s per round: {'; '.join(notes)}",
        }
    ]
