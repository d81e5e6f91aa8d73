"""Seeded simulation runs: 1,000 seeds with n = 4, 50 with n = 5 and 50 with n = 7.

Each seed draws its own fault plan (network loss, duplication, reordering, partitions,
crash/restart, up to f Byzantine nodes), checks every safety invariant after every
step, requires a commit by every honest replica within the liveness bound after GST,
runs at least 20 heights, and requires every enabled fault kind to have fired.

The seeds run in a process pool (one worker per core) started once per session; each
test below waits for one chunk of seeds, so a failure names its chunk and the failing
seed with the command that reproduces it.
"""
from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import pytest

from .simulator import SimulationFailure, run_seed

CHUNK = 50
PLANS = [(4, range(0, 1000)), (5, range(0, 50)), (7, range(0, 50))]
CHUNKS = [(n, seeds[start:start + CHUNK]) for n, seeds in PLANS for start in range(0, len(seeds), CHUNK)]


def run_chunk(n: int, seeds: range) -> dict:
    """Run seeds in a worker; return a summary (failures as text, so they pickle)."""
    failures, faults, counters = [], Counter(), Counter()
    heights_min, liveness_max = None, 0
    for seed in seeds:
        try:
            result = run_seed(seed, n)
        except SimulationFailure as exc:
            failures.append(str(exc))
            continue
        faults.update(result.faults)
        counters.update({key: result.replica_counters[key] for key in ("view_changes_started", "fetches", "commits")})
        heights_min = result.heights if heights_min is None else min(heights_min, result.heights)
        liveness_max = max(liveness_max, result.liveness_ticks or 0)
    return {
        "failures": failures, "faults": faults, "counters": counters,
        "heights_min": heights_min, "liveness_max": liveness_max,
    }


@pytest.fixture(scope="session")
def chunk_results():
    workers = max(1, min(os.cpu_count() or 1, 4))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {chunk_id: pool.submit(run_chunk, n, seeds) for chunk_id, (n, seeds) in enumerate(CHUNKS)}
        yield futures


@pytest.mark.parametrize(
    "chunk_id", range(len(CHUNKS)), ids=[f"n{n}-seeds{seeds.start}-{seeds.stop - 1}" for n, seeds in CHUNKS]
)
def test_seeds(chunk_results, chunk_id):
    summary = chunk_results[chunk_id].result()
    assert not summary["failures"], "\n\n".join(summary["failures"])
    assert summary["heights_min"] >= 20
    # The chunk as a whole exercised the protocol's recovery paths, not just the happy path.
    assert summary["counters"]["view_changes_started"] > 0
    for kind in ("drop", "duplicate", "reorder", "partition", "crash", "restart"):
        assert summary["faults"][kind] > 0, f"no seed of this chunk injected {kind}"
    assert any(kind.startswith("byzantine.") for kind in summary["faults"])
