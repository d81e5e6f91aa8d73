"""A validator that sends garbage: three honest real nodes keep committing, count and drop
every malformed peer message, and never crash. The Byzantine validator is a PeerNetwork in
this test process holding node3's genuine key (so it passes the handshake)."""
import asyncio
import os
import random
import time
import urllib.request

import pytest

from ledger import codec
from ledger.crypto import KeyPair
from p2p.network import PeerInfo, PeerNetwork
from tests.contract_client import Key, http, sign_tx
from tests.netutil import Network

pytestmark = pytest.mark.slow


def metric(net, i, name) -> int:
    with urllib.request.urlopen(f"{net.rpc(i)}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return int(float(line.split()[1]))
    return 0


def test_garbage_from_a_validator_is_dropped_and_counted(tmp_path):
    net = Network(str(tmp_path / "net"), validators=4)
    try:
        for i in range(3):
            net.start(i)
        for i in range(3):
            net.wait_rpc(i)
        key = KeyPair.load(os.path.join(net.home(3), "node_key.json"))
        peers = [PeerInfo(name=f"node{i}", public_key=bytes.fromhex(net.genesis["validators"][i]["public_key"]),
                          host="127.0.0.1", port=net.base_port + 100 + i) for i in range(3)]
        genesis_hash = codec.sha256(codec.encode(net.genesis))

        async def attack():
            byzantine = PeerNetwork(chain_id="test-chain", genesis_hash=genesis_hash, key=key, name="node3",
                                    listen_host="127.0.0.1", listen_port=net.base_port + 103, peers=peers,
                                    on_message=lambda sender, payload: None)
            await byzantine.start()
            try:
                assert await byzantine.wait_connected(3, 20)
                rng = random.Random(5)
                garbage = [
                    os.urandom(200), b"", codec.encode(["c", os.urandom(300)]), codec.encode(["c", b""]),
                    codec.encode(["g", [os.urandom(100), 5, "x"]]), codec.encode(["f", -1]), codec.encode(["f", "x"]),
                    codec.encode(["F", [[b"x", b"y", {}]]]), codec.encode(["zz", 1]), codec.encode(["t", "high"]),
                    codec.encode({"c": 1}), codec.encode(["c", codec.encode({"type": "prepare", "view": 2**63})]),
                ]
                for _ in range(300):
                    byzantine.broadcast(rng.choice(garbage))
                await asyncio.sleep(1.0)
            finally:
                await byzantine.stop()

        asyncio.run(attack())
        # The three honest nodes (a quorum of 4) still commit.
        bank = Key.from_file(os.path.join(net.directory, "keys", "BANK0.json"))
        raw, _ = sign_tx("test-chain", "account.open", {"id": "BANK0:ok", "owner": "BANK0", "key": bank.public}, [bank],
                         1, int(time.time() * 1000) + 60_000)
        status, answer = http("POST", f"{net.rpc(0)}/v1/txs?wait=commit&timeout=60", raw, "application/msgpack")
        assert status == 200 and answer["result"]["code"] == "ok", answer
        for i in range(3):
            assert net.processes[i].poll() is None, f"node{i} died"
            dropped = metric(net, i, "ledger_node_peer_garbage_total") + metric(net, i, "ledger_node_gossip_invalid_total")
            assert dropped > 0, f"node{i} counted no garbage"
    finally:
        net.stop_all()
