"""A transaction a node acknowledged must reach the other validators even when a gossip
message is lost: the node resends its pending transactions on every new link (told
apart by link generation, so a link that drops and comes back within one tick counts),
and gossips again, periodically, what it acknowledged and still holds uncommitted.

The node runs unstarted, with its clock injected and its peer network replaced by a
recorder, so nothing here depends on timing."""
import time

from ledger import codec
from ledger.crypto import KeyPair
from ledger.node import REGOSSIP_AGE_MS, REGOSSIP_INTERVAL_MS, Node
from ledger.tx import make_tx
from tests.chainmaker import make_chain


class RecordingPeers:
    """Stands in for p2p.PeerNetwork: records what the node sends."""

    def __init__(self):
        self.generations: dict[bytes, int] = {}
        self.broadcasts: list[list[bytes]] = []
        self.sends: list[tuple[bytes, list[bytes]]] = []

    def link_generations(self) -> dict[bytes, int]:
        return dict(self.generations)

    def broadcast(self, payload: bytes) -> None:
        kind, data = codec.decode(payload)
        if kind == "g":
            self.broadcasts.append(data)

    def send(self, peer: bytes, payload: bytes) -> bool:
        kind, data = codec.decode(payload)
        if kind == "g":
            self.sends.append((peer, data))
        return True

    def status(self) -> list[dict]:
        return []


class Clock:
    def __init__(self):
        self.now_ms = int(time.time() * 1000)

    def __call__(self) -> int:
        return self.now_ms


async def acknowledged_node(tmp_path, count: int):
    chain = make_chain(str(tmp_path / "net"), blocks=1, txs_per_block=1, validators=4)
    clock = Clock()
    node = Node(chain.home, clock=clock)
    peers = RecordingPeers()
    node.p2p = peers
    bank = chain.bank_keys["BANK0"]
    raws = [make_tx(chain.chain_id, "account.open", {"id": f"BANK0:re{n}", "owner": "BANK0", "key": bank.public_key},
                    [bank], n, clock.now_ms + 600_000) for n in range(count)]
    for raw in raws:
        node.submit(raw)
    await node.synced()  # acknowledged: synced as pending records, gossiped once
    assert peers.broadcasts == [raws]
    peers.broadcasts.clear()
    return node, peers, clock, raws


async def test_a_link_that_came_back_between_two_ticks_gets_every_pending_tx(tmp_path):
    node, peers, clock, raws = await acknowledged_node(tmp_path, 3)
    try:
        peer = b"\x01" * 32
        peers.generations = {peer: 1}
        node._gossip_to_new_links()
        assert peers.sends == [(peer, raws)]
        node._gossip_to_new_links()  # the same link: nothing again
        assert len(peers.sends) == 1
        peers.generations = {peer: 2}  # dropped and redialed: the peer set looks the same
        node._gossip_to_new_links()
        assert peers.sends == [(peer, raws), (peer, raws)]
    finally:
        node.store.close()


async def test_acknowledged_txs_still_pending_are_gossiped_again(tmp_path):
    node, peers, clock, raws = await acknowledged_node(tmp_path, 3)
    try:
        node._regossip_stale(clock.now_ms)
        assert peers.broadcasts == []  # young: the first gossip is still on its way
        clock.now_ms += REGOSSIP_AGE_MS
        node._regossip_stale(clock.now_ms)
        assert peers.broadcasts == [raws]
        node._regossip_stale(clock.now_ms + REGOSSIP_INTERVAL_MS - 1)
        assert len(peers.broadcasts) == 1  # at most once per interval
        # Committed ones leave the pool, and with it the re-gossip.
        node.mempool.remove_committed([node.mempool.get(next(iter(node._acknowledged))).tx_id])
        clock.now_ms += REGOSSIP_INTERVAL_MS
        node._regossip_stale(clock.now_ms)
        assert len(peers.broadcasts) == 2 and len(peers.broadcasts[1]) == 2
        assert node.stats.counters["regossiped_stale"] == 5
    finally:
        node.store.close()


async def test_gossiped_txs_are_left_to_the_node_that_acknowledged_them(tmp_path):
    node, peers, clock, raws = await acknowledged_node(tmp_path, 1)
    try:
        bank = KeyPair.load(str(tmp_path / "net" / "keys" / "BANK0.json"))
        other = make_tx(node.chain_id, "account.open", {"id": "BANK0:gossiped", "owner": "BANK0", "key": b"\x02" * 32},
                        [bank], 99, clock.now_ms + 600_000)
        node._admit_gossip([other])
        assert len(node.mempool) == 2
        clock.now_ms += REGOSSIP_AGE_MS
        node._regossip_stale(clock.now_ms)
        assert peers.broadcasts == [raws]  # only what this node acknowledged
    finally:
        node.store.close()
