#!/usr/bin/env python3
"""Catch-up speed and primary-crash recovery time on a real 4-validator network.

1. Catch-up: node3 is stopped while the other three commit --blocks blocks (each with
   --txs-per-block transfers); node3 is restarted and timed until it reaches their tip.
   Prints blocks/s and tx/s of catch-up (fetch, certificate check, re-execution, commit).
2. Primary crash: under a steady trickle of transactions the primary is killed with
   SIGKILL; prints the time from the kill to the next commit on the others.

    .venv/bin/python scripts/bench_catchup.py --blocks 300 --txs-per-block 20
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.contract_client import Key, http, sign_tx, submit_batch  # noqa: E402
from tests.netutil import Network  # noqa: E402


def now_ms() -> int:
    return int(time.time() * 1000)


def height(net: Network, i: int) -> int:
    return http("GET", f"{net.rpc(i)}/v1/status", timeout=10)[1]["height"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=300)
    parser.add_argument("--txs-per-block", type=int, default=20)
    args = parser.parse_args()
    net = Network(os.path.join(tempfile.mkdtemp(prefix="bench-catchup-"), "net"), validators=4)
    results: dict = {}
    try:
        for i in range(3):
            net.start(i)
        for i in range(3):
            net.wait_rpc(i)
        bank = Key.from_file(os.path.join(net.directory, "keys", "BANK0.json"))
        alice = Key(os.urandom(32))
        nonce = iter(range(1, 10**9))
        for tx_type, body in (("account.open", {"id": "BANK0:alice", "owner": "BANK0", "key": alice.public}),
                              ("account.open", {"id": "BANK0:bob", "owner": "BANK0", "key": alice.public}),
                              ("issue", {"account": "BANK0:alice", "currency": "USD", "amount": 10**12})):
            raw, _ = sign_tx("test-chain", tx_type, body, [bank], next(nonce), now_ms() + 3_600_000)
            code, answer = http("POST", f"{net.rpc(0)}/v1/txs?wait=commit&timeout=60", raw, "application/msgpack")
            assert code == 200 and answer["result"]["code"] == "ok", answer
        # One batch per block: wait for each to commit so blocks have the intended size.
        for _ in range(args.blocks):
            raws = [sign_tx("test-chain", "transfer", {"from": "BANK0:alice", "to": "BANK0:bob", "currency": "USD",
                                                       "amount": 1}, [alice], next(nonce), now_ms() + 3_600_000)[0]
                    for _ in range(args.txs_per_block)]
            start_height = height(net, 0)
            code, answer = submit_batch(net.rpc(0), raws)
            assert code == 200, answer
            while height(net, 0) <= start_height:
                time.sleep(0.005)
        tip = height(net, 0)
        started = time.perf_counter()
        net.start(3)
        net.wait_height(3, tip, timeout=600)
        elapsed = time.perf_counter() - started
        results["catch_up"] = {"blocks": tip, "seconds_incl_process_start": round(elapsed, 2),
                               "blocks_per_s": round(tip / elapsed, 1),
                               "txs_per_s": round(args.blocks * args.txs_per_block / elapsed, 1)}

        status = http("GET", f"{net.rpc(1)}/v1/status")[1]
        primary = [v["public_key"] for v in net.genesis["validators"]].index(status["primary"])
        others = [i for i in range(4) if i != primary]
        base = max(height(net, i) for i in others)
        raw, _ = sign_tx("test-chain", "transfer", {"from": "BANK0:alice", "to": "BANK0:bob", "currency": "USD",
                                                    "amount": 1}, [alice], next(nonce), now_ms() + 3_600_000)
        killed = time.perf_counter()
        net.kill(primary)
        submit_batch(net.rpc(others[0]), [raw])
        while min(height(net, i) for i in others) <= base:
            time.sleep(0.01)
        results["primary_crash"] = {"killed": f"node{primary}",
                                    "seconds_to_next_commit": round(time.perf_counter() - killed, 2)}
    finally:
        net.stop_all()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
