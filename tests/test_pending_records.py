"""Pending records: what a node acknowledged to clients survives its crash. At start it
re-admits each record that is still admissible (signatures checked again) and deletes
the settled ones (committed, expired) and any it cannot use."""
import time

from ledger.node import Node
from ledger.store import LevelDBStore
from ledger.tx import make_tx, parse_signed
from tests.chainmaker import make_chain


def test_restart_readmits_acknowledged_and_drops_settled(tmp_path):
    chain = make_chain(str(tmp_path / "net"), blocks=2, txs_per_block=3, validators=1)
    bank = chain.bank_keys["BANK0"]
    now = int(time.time() * 1000)

    def account_open(name: str, nonce: int, expires: int):
        body = {"id": f"BANK0:{name}", "owner": "BANK0", "key": bank.public_key}
        return parse_signed(make_tx(chain.chain_id, "account.open", body, [bank], nonce, expires))

    fresh = account_open("fresh", 1, now + 600_000)
    expired = account_open("expired", 2, now - 1)
    misfiled = account_open("misfiled", 3, now + 600_000)
    store = LevelDBStore(chain.data_dir)
    committed = store.block(2)
    store.pending_write([
        (fresh.tx_id, fresh.raw),
        (expired.tx_id, expired.raw),
        (committed.tx_ids[0], committed.txs[0]),
        (b"\x01" * 32, b"\x92not an envelope"),
        (b"\x02" * 32, misfiled.raw),  # under another tx's id
    ])
    store.close()

    node = Node(chain.home)
    try:
        assert len(node.mempool) == 1 and node.mempool.get(fresh.tx_id).raw == fresh.raw
        assert node.stats.counters["pending_restored"] == 1
        assert node.stats.counters["pending_records_dropped"] == 2  # the garbage and the misfiled one
        assert node.store.pending_items() == [(fresh.tx_id, fresh.raw)]
    finally:
        node.store.close()


def test_commit_settles_pending_records_in_its_batch(tmp_path):
    chain = make_chain(str(tmp_path / "net"), blocks=1, txs_per_block=1, validators=1)
    store = LevelDBStore(chain.data_dir)
    try:
        store.pending_write([(b"\x07" * 32, b"a"), (b"\x08" * 32, b"b")])
        tip = store.tip()
        store.commit_block(height=tip.height + 1, header=b"h", block_hash=b"\x00" * 32, time=tip.time,
                           state_root=tip.state_root, txs=[], tx_ids=[], results=[],
                           certificate={}, changes={}, settled_pending=[b"\x07" * 32])
        assert store.pending_items() == [(b"\x08" * 32, b"b")]
        store.pending_delete([b"\x08" * 32])
        assert store.pending_items() == []
    finally:
        store.close()
