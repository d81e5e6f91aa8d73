"""Benchmark: `ledger audit` throughput on a large chain (not a test).

Builds, with tests/chainmaker.py (no node runs), a 4-validator chain of 50 blocks of
2,000 transfers (100,000+ transactions) in a temporary directory, then audits it
offline as `ledger audit --home DIR/node0` does (three times: the best run is the
least disturbed by other load) and prints the transactions per second.

    .venv/bin/python scripts/bench_audit.py [--blocks N] [--txs-per-block M] [--validators 1|4]
                                            [--workers N] [--rounds N] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from ledger.audit import audit_store  # noqa: E402
from tests.chainmaker import make_chain  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=51, help="block 1 is the setup block; the rest hold transfers")
    parser.add_argument("--txs-per-block", type=int, default=2000)
    parser.add_argument("--validators", type=int, default=4)
    parser.add_argument("--workers", type=int, default=None,
                        help="signature-verifying processes (0: inline; default: one per core)")
    parser.add_argument("--rounds", type=int, default=3, help="audit the chain this many times")
    parser.add_argument("--keep", metavar="DIR", help="build the chain in DIR (must not exist) and keep it")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-audit-") as scratch:
        directory = args.keep or str(pathlib.Path(scratch) / "net")
        started = time.perf_counter()
        chain = make_chain(directory, blocks=args.blocks, txs_per_block=args.txs_per_block,
                           validators=args.validators)
        print(f"built {chain.height} blocks, {chain.tx_count:,} transactions, {args.validators} validators "
              f"in {time.perf_counter() - started:.1f} s")
        best = 0.0
        for _ in range(args.rounds):
            report = audit_store(chain.home, verify_workers=args.workers)
            if not report.intact:
                print(report.to_text())
                return 1
            best = max(best, report.txs_per_s)
            print(f"audit: {report.blocks} blocks, {report.txs:,} transactions in {report.elapsed_s:.2f} s "
                  f"= {report.txs_per_s:,.0f} tx/s (intact)")
        print(f"best of {args.rounds}: {best:,.0f} tx/s on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
