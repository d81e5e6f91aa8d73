#!/usr/bin/env python3
"""Throughput and latency of signed transfers through the batch RPC of a real network.

Starts N `ledger node` processes on free loopback ports, opens and funds accounts,
pre-signs transfers, then submits them in batches (round-robin over the nodes) either
as fast as the network takes them or at a fixed offered rate, and listens to node0's
events WebSocket to time every transfer from submission to commit. Prints committed
tx/s and submit-to-commit latency percentiles. Nothing here is a test: it prints figures.

    .venv/bin/python scripts/bench_tps.py --validators 4 --txs 20000
    .venv/bin/python scripts/bench_tps.py --validators 4 --txs 20000 --rate 1000
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import urllib.request

import aiohttp
import msgpack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ledger.crypto import KeyPair  # noqa: E402
from ledger.tx import make_tx  # noqa: E402
from tests.netutil import Network  # noqa: E402


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[index]


async def post_batch(session: aiohttp.ClientSession, rpc: str, raws: list[bytes]) -> list[dict]:
    async with session.post(f"{rpc}/v1/txs/batch", data=msgpack.packb(raws, use_bin_type=True),
                            headers={"Content-Type": "application/msgpack"}) as response:
        body = await response.json()
        if response.status != 200:
            raise RuntimeError(f"batch refused: {response.status} {body}")
        return body["results"]


def node_metric(rpc: str, name: str) -> int:
    """One counter from a node's /metrics (0 when it has not been counted yet)."""
    with urllib.request.urlopen(f"{rpc}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            key, _, value = line.partition(" ")
            if key == name:
                return int(float(value))
    return 0


async def wait_all(session, rpc: str, tx_ids: list[str], timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    for tx_id in tx_ids:
        while True:
            async with session.get(f"{rpc}/v1/txs/{tx_id}") as response:
                body = await response.json()
            if response.status == 200 and body["status"] == "committed":
                if body["result"]["code"] != "ok":
                    raise RuntimeError(f"setup tx failed: {body}")
                break
            if time.time() > deadline:
                raise TimeoutError(f"setup tx {tx_id} not committed")
            await asyncio.sleep(0.05)


async def run(args) -> dict:
    directory = tempfile.mkdtemp(prefix="bench-")
    net = Network(os.path.join(directory, "net"), validators=args.validators)
    net.start_all()
    try:
        for i in range(args.validators):
            net.wait_connected(i, timeout=60)
        chain = net.genesis["chain_id"]
        bank = KeyPair.load(os.path.join(net.directory, "keys", "BANK0.json"))
        rpcs = [net.rpc(i) for i in range(args.validators)]
        expires = int(time.time() * 1000) + 3_600_000
        account_keys = [KeyPair.generate() for _ in range(args.accounts)]
        names = [f"BANK0:bench{i}" for i in range(args.accounts)]
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            setup = [make_tx(chain, "account.open", {"id": n, "owner": "BANK0", "key": k.public_key}, [bank], i, expires)
                     for i, (n, k) in enumerate(zip(names, account_keys))]
            setup += [make_tx(chain, "issue", {"account": n, "currency": "USD", "amount": 10**12}, [bank], 10**6 + i, expires)
                      for i, n in enumerate(names)]
            opened = await post_batch(session, rpcs[0], setup[: args.accounts])
            await wait_all(session, rpcs[0], [r["tx_id"] for r in opened])
            issued = await post_batch(session, rpcs[0], setup[args.accounts:])
            await wait_all(session, rpcs[0], [r["tx_id"] for r in issued])

            signing_started = time.perf_counter()
            transfers = []
            for n in range(args.txs):
                source = n % args.accounts
                target = (source + 1 + n // args.accounts) % args.accounts
                if target == source:
                    target = (source + 1) % args.accounts
                transfers.append(make_tx(chain, "transfer", {"from": names[source], "to": names[target], "currency": "USD",
                                                             "amount": 1}, [account_keys[source]], 2 * 10**6 + n, expires))
            signing_s = time.perf_counter() - signing_started

            submitted_at: dict[str, float] = {}
            committed_at: dict[str, float] = {}
            codes: dict[str, int] = {}
            ws = await session.ws_connect(f"{rpcs[0]}/v1/events", max_msg_size=0)

            async def listen():
                async for message in ws:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break
                    now = time.perf_counter()
                    for tx in json.loads(message.data)["txs"]:
                        committed_at.setdefault(tx["tx_id"], now)
                        codes[tx["code"]] = codes.get(tx["code"], 0) + 1

            listener = asyncio.create_task(listen())
            started = time.perf_counter()
            refused = 0
            batches = [transfers[i:i + args.batch] for i in range(0, len(transfers), args.batch)]
            interval = args.batch / args.rate if args.rate else 0.0
            in_flight = set()
            for number, batch in enumerate(batches):
                if interval:
                    delay = started + number * interval - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)

                async def send(batch=batch, rpc=rpcs[number % len(rpcs)]):
                    nonlocal refused
                    sent = time.perf_counter()
                    for result in await post_batch(session, rpc, batch):
                        if "tx_id" in result:
                            submitted_at[result["tx_id"]] = sent
                        else:
                            refused += 1

                task = asyncio.create_task(send())
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                if len(in_flight) >= args.concurrency:
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            await asyncio.gather(*in_flight)
            submit_s = time.perf_counter() - started
            deadline = time.perf_counter() + args.drain_timeout
            while time.perf_counter() < deadline and not all(t in committed_at for t in submitted_at):
                await asyncio.sleep(0.05)
            listener.cancel()
            await ws.close()
        latencies = sorted((committed_at[t] - s) * 1000 for t, s in submitted_at.items() if t in committed_at)
        committed = len(latencies)
        last_commit = max((committed_at[t] for t in submitted_at if t in committed_at), default=started)
        status = [json.loads(json.dumps(net.wait_rpc(i))) for i in range(args.validators)]
        # Work beyond the first gossip: transactions gossiped again because they stayed
        # pending (ledger/node.py REGOSSIP_AGE_MS) or resent on links that came up.
        regossip = {name: sum(node_metric(net.rpc(i), f"ledger_node_{name}_total") for i in range(args.validators))
                    for name in ("regossiped_stale", "regossiped")}
        return {
            "validators": args.validators, "offered_rate": args.rate or "max", "txs": args.txs, "batch": args.batch,
            "accepted": len(submitted_at), "refused": refused, "committed": committed,
            "submit_seconds": round(submit_s, 2), "commit_seconds": round(last_commit - started, 2),
            "committed_tx_per_s": round(committed / max(last_commit - started, 1e-9), 1),
            "latency_ms_p50": round(percentile(latencies, 0.50), 1),
            "latency_ms_p90": round(percentile(latencies, 0.90), 1),
            "latency_ms_p99": round(percentile(latencies, 0.99), 1),
            "result_codes": codes, "client_signing_s": round(signing_s, 2),
            "heights": [s["height"] for s in status], "views": [s["view"] for s in status],
            "txs_gossiped_again": regossip,
        }
    finally:
        net.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--validators", type=int, default=4)
    parser.add_argument("--txs", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--rate", type=float, default=0, help="offered tx/s (0: as fast as accepted)")
    parser.add_argument("--concurrency", type=int, default=4, help="batches in flight at once")
    parser.add_argument("--drain-timeout", type=float, default=120)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
