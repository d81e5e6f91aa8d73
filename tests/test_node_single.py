"""A real one-validator `ledger node` process, driven only through the contract's RPC.

The client is tests/contract_client.py (msgpack + PyNaCl + urllib, no node code). The
node is killed with SIGKILL in the middle of a stream of submissions and restarted:
every transaction it reported committed must still be committed at the same place, and
the chain must continue.
"""
import os
import time

import pytest

from tests.contract_client import Key, http, sign_tx, submit_batch
from tests.netutil import Network

pytestmark = pytest.mark.slow


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def net(tmp_path):
    network = Network(str(tmp_path / "net"), validators=1)
    try:
        yield network
    finally:
        network.stop_all()


def test_kill9_mid_stream_loses_nothing_committed(net):
    net.start(0)
    status = net.wait_rpc(0)
    assert status["chain_id"] == "test-chain" and status["node"] == "node0"
    rpc = net.rpc(0)
    bank = Key.from_file(os.path.join(net.directory, "keys", "BANK0.json"))
    alice, bob = Key(os.urandom(32)), Key(os.urandom(32))
    nonce = iter(range(1, 10**9))

    def tx(tx_type, body, keys):
        return sign_tx("test-chain", tx_type, body, keys, next(nonce), now_ms() + 600_000)

    for account, key in (("BANK0:alice", alice), ("BANK0:bob", bob)):
        raw, _ = tx("account.open", {"id": account, "owner": "BANK0", "key": key.public}, [bank])
        code, answer = http("POST", f"{rpc}/v1/txs?wait=commit", raw, "application/msgpack")
        assert code == 200 and answer["result"]["code"] == "ok", answer
    raw, _ = tx("issue", {"account": "BANK0:alice", "currency": "USD", "amount": 10**9}, [bank])
    code, answer = http("POST", f"{rpc}/v1/txs?wait=commit", raw, "application/msgpack")
    assert code == 200 and answer["result"]["code"] == "ok", answer

    reported: dict[str, tuple[int, int]] = {}
    submitted: list[str] = []

    def poll_committed():
        for tx_id in submitted:
            if tx_id in reported:
                continue
            code, answer = http("GET", f"{rpc}/v1/txs/{tx_id}")
            if code == 200 and answer["status"] == "committed":
                assert answer["result"]["code"] == "ok", answer
                reported[tx_id] = (answer["height"], answer["index"])

    for batch_number in range(12):
        raws = []
        for _ in range(50):
            raw, tx_id = tx("transfer", {"from": "BANK0:alice", "to": "BANK0:bob", "currency": "USD", "amount": 1}, [alice])
            raws.append(raw)
            submitted.append(tx_id)
        code, answer = submit_batch(rpc, raws)
        assert code == 200 and all(r.get("status") == "pending" for r in answer["results"]), answer
        if batch_number == 8:
            poll_committed()
            net.kill(0)  # SIGKILL in the middle of the stream
            break
        time.sleep(0.05)
    assert reported, "some transfers were committed before the kill"
    heights = {h for h, _ in reported.values()}

    net.start(0)
    net.wait_rpc(0)
    for tx_id, (height, index) in reported.items():
        code, answer = http("GET", f"{rpc}/v1/txs/{tx_id}")
        assert code == 200 and answer["status"] == "committed", (tx_id, answer)
        assert (answer["height"], answer["index"]) == (height, index)
    # The chain continues: new transfers commit above the old tip, linked to it.
    tip_before = http("GET", f"{rpc}/v1/blocks/latest")[1]
    raw, tx_id = tx("transfer", {"from": "BANK0:alice", "to": "BANK0:bob", "currency": "USD", "amount": 7}, [alice])
    code, answer = http("POST", f"{rpc}/v1/txs?wait=commit&timeout=20", raw, "application/msgpack")
    assert code == 200 and answer["result"]["code"] == "ok", answer
    assert answer["height"] > tip_before["height"]
    block = http("GET", f"{rpc}/v1/blocks/{tip_before['height'] + 1}")[1]
    assert block["header"]["prev"] == tip_before["hash"]
    # Balances add up: every committed transfer moved exactly its amount.
    committed_count = 0
    for tx_id in submitted:
        code, answer = http("GET", f"{rpc}/v1/txs/{tx_id}")
        if code == 200 and answer["status"] == "committed":
            committed_count += 1
    bob_view = http("GET", f"{rpc}/v1/accounts/BANK0:bob")[1]
    assert bob_view["balances"]["USD"] == committed_count + 7
    assert max(heights) <= tip_before["height"]
