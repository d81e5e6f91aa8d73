"""Benchmark: execute_block throughput on transfers (not a test).

Builds a state with 1,000 funded accounts, then times `execute_block` on one block
of 5,000 random transfers between them (signing happens before the clock starts;
execution never verifies signatures). Prints transfers per second.

    .venv/bin/python scripts/bench_execution.py [--accounts N] [--transfers N] [--rounds N]
"""
from __future__ import annotations

import argparse
import pathlib
import random
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from ledger import codec  # noqa: E402
from ledger.crypto import KeyPair  # noqa: E402
from ledger.execution import execute_block  # noqa: E402
from ledger.state import LedgerState  # noqa: E402
from ledger.tx import make_tx, parse_signed  # noqa: E402

CHAIN_ID = "bench-chain"
GENESIS_TIME_MS = 1_800_000_000_000


def key(name: str) -> KeyPair:
    return KeyPair.from_seed(codec.sha256(b"bench/" + name.encode()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--transfers", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    bank = key("BANK0")
    genesis = {"chain_id": CHAIN_ID, "genesis_time": GENESIS_TIME_MS, "validators": [],
               "members": [{"id": "BANK0", "name": "Bank 0", "admin_key": bank.public_key.hex()}],
               "issuers": {"USD": "BANK0"}, "params": {}}
    state = LedgerState.from_genesis(genesis)
    account_keys = [key(f"acct{i}") for i in range(args.accounts)]
    expires = GENESIS_TIME_MS + 3_600_000
    setup = []
    for i, account_key in enumerate(account_keys):
        body = {"id": f"acct{i}", "owner": "BANK0", "key": account_key.public_key}
        setup.append(parse_signed(make_tx(CHAIN_ID, "account.open", body, [bank], i, expires)))
        body = {"account": f"acct{i}", "currency": "USD", "amount": 10**12}
        setup.append(parse_signed(make_tx(CHAIN_ID, "issue", body, [bank], i, expires)))
    outcome = execute_block(state, 1, GENESIS_TIME_MS + 1000, setup)
    assert all(code == "ok" for code in outcome.results)
    state.apply(outcome.changes, outcome.state_root)

    rng = random.Random(7)
    transfers = []
    for nonce in range(args.transfers):
        source, target = rng.sample(range(args.accounts), 2)
        body = {"from": f"acct{source}", "to": f"acct{target}", "currency": "USD", "amount": rng.randint(1, 1000)}
        transfers.append(parse_signed(make_tx(CHAIN_ID, "transfer", body, [account_keys[source]], nonce, expires)))

    best_s = float("inf")
    for _ in range(args.rounds):
        started = time.perf_counter()
        outcome = execute_block(state, 2, GENESIS_TIME_MS + 2000, transfers)
        best_s = min(best_s, time.perf_counter() - started)
    assert all(code == "ok" for code in outcome.results)
    print(f"execute_block: {args.transfers} transfers between {args.accounts} accounts, "
          f"best of {args.rounds}: {best_s * 1000:.1f} ms = {args.transfers / best_s:,.0f} transfers/s "
          f"({len(outcome.changes)} records changed)")


if __name__ == "__main__":
    main()
