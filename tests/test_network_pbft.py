"""Four real `ledger node` processes: kill -9 of the primary under load, a view change,
commits continue, the killed node restarts and catches up, nothing reported committed is
lost, and every node holds identical block hashes."""
import os
import random
import threading
import time

import pytest

from tests.contract_client import Key, http, sign_tx, submit_batch
from tests.netutil import Network

pytestmark = pytest.mark.slow


def now_ms() -> int:
    return int(time.time() * 1000)


class Load:
    """Submits transfer batches to live nodes in a thread and remembers what was reported committed."""

    def __init__(self, net, live: set, alice: Key):
        self.net, self.live, self.alice = net, live, alice
        self.submitted: list[tuple[str, int]] = []
        self.reported: dict[str, tuple[int, int]] = {}
        self.stop = threading.Event()
        self.nonce = 10**6
        self.errors: list = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        rng = random.Random(7)
        while not self.stop.is_set():
            node = rng.choice(sorted(self.live))
            raws = []
            for _ in range(40):
                self.nonce += 1
                raw, tx_id = sign_tx("test-chain", "transfer", {"from": "BANK0:alice", "to": "BANK1:bob",
                                     "currency": "USD", "amount": 1}, [self.alice], self.nonce, now_ms() + 600_000)
                raws.append((raw, tx_id))
            try:
                code, answer = submit_batch(self.net.rpc(node), [r for r, _ in raws])
            except OSError:
                continue  # the node just died; the test kills nodes on purpose
            if code == 200:
                for (_, tx_id), result in zip(raws, answer["results"]):
                    if result.get("status") == "pending":
                        self.submitted.append((tx_id, node))
            self.poll(rng)
            time.sleep(0.1)

    def poll(self, rng):
        for tx_id, node in self.submitted[-200:]:
            if tx_id in self.reported or node not in self.live:
                continue
            try:
                code, answer = http("GET", f"{self.net.rpc(node)}/v1/txs/{tx_id}", timeout=5)
            except OSError:
                continue
            if code == 200 and answer["status"] == "committed":
                self.reported[tx_id] = (answer["height"], answer["index"])


@pytest.fixture
def net(tmp_path):
    network = Network(str(tmp_path / "net"), validators=4)
    try:
        yield network
    finally:
        network.stop_all()


def height_of(net, i):
    return http("GET", f"{net.rpc(i)}/v1/status", timeout=5)[1]["height"]


def test_primary_crash_view_change_catch_up(net):
    net.start_connected()
    bank0 = Key.from_file(os.path.join(net.directory, "keys", "BANK0.json"))
    bank1 = Key.from_file(os.path.join(net.directory, "keys", "BANK1.json"))
    alice, bob = Key(os.urandom(32)), Key(os.urandom(32))
    setup = [
        sign_tx("test-chain", "account.open", {"id": "BANK0:alice", "owner": "BANK0", "key": alice.public}, [bank0], 1, now_ms() + 600_000),
        sign_tx("test-chain", "account.open", {"id": "BANK1:bob", "owner": "BANK1", "key": bob.public}, [bank1], 2, now_ms() + 600_000),
    ]
    for raw, _ in setup:
        code, answer = http("POST", f"{net.rpc(1)}/v1/txs?wait=commit&timeout=30", raw, "application/msgpack")
        assert code == 200 and answer["result"]["code"] == "ok", answer
    raw, _ = sign_tx("test-chain", "issue", {"account": "BANK0:alice", "currency": "USD", "amount": 10**9}, [bank0], 3, now_ms() + 600_000)
    code, answer = http("POST", f"{net.rpc(2)}/v1/txs?wait=commit&timeout=30", raw, "application/msgpack")
    assert code == 200 and answer["result"]["code"] == "ok", answer

    live = {0, 1, 2, 3}
    load = Load(net, live, alice)
    load.thread.start()
    try:
        time.sleep(3)
        status = http("GET", f"{net.rpc(0)}/v1/status")[1]
        primary = [v["public_key"] for v in net.genesis["validators"]].index(status["primary"])
        live.discard(primary)
        others = sorted(live)
        height_at_kill = max(height_of(net, i) for i in others)
        killed_at = time.time()
        net.kill(primary)
        deadline = time.time() + 45
        while time.time() < deadline and min(height_of(net, i) for i in others) <= height_at_kill + 1:
            time.sleep(0.05)
        recovered_s = time.time() - killed_at
        assert min(height_of(net, i) for i in others) > height_at_kill + 1, "commits did not continue after the primary crashed"
        views = {http("GET", f"{net.rpc(i)}/v1/status")[1]["view"] for i in others}
        assert min(views) >= 1, "a view change followed the primary's crash"
        print(f"primary node{primary} killed: commits resumed after {recovered_s:.2f} s")
        time.sleep(2)
        net.start(primary)
        net.wait_rpc(primary)
        live.add(primary)
        time.sleep(3)
    finally:
        load.stop.set()
        load.thread.join(timeout=30)
    # Everything pending drains; the restarted node catches up to the same tip.
    target = max(height_of(net, i) for i in range(4))
    for i in range(4):
        net.wait_height(i, target, timeout=60)
    assert load.reported, "the load reported commits"
    tip = min(height_of(net, i) for i in range(4))
    hashes = {}
    for i in range(4):
        for h in range(1, tip + 1):
            block = http("GET", f"{net.rpc(i)}/v1/blocks/{h}")[1]
            assert hashes.setdefault(h, block["hash"]) == block["hash"], f"node{i} differs at height {h}"
    for tx_id, place in load.reported.items():
        for i in range(4):
            code, answer = http("GET", f"{net.rpc(i)}/v1/txs/{tx_id}")
            assert code == 200 and (answer["height"], answer["index"]) == place, (i, tx_id, answer)
    # Nothing acknowledged is lost: every transaction answered "pending" commits, also
    # those the primary acknowledged just before it was killed (it re-admits them).
    unconfirmed = {tx_id for tx_id, _ in load.submitted} - set(load.reported)
    deadline = time.time() + 60
    while unconfirmed and time.time() < deadline:
        for tx_id in sorted(unconfirmed):
            code, answer = http("GET", f"{net.rpc(3)}/v1/txs/{tx_id}")
            if code == 200 and answer["status"] == "committed":
                unconfirmed.discard(tx_id)
        time.sleep(0.2)
    assert not unconfirmed, f"{len(unconfirmed)} of {len(load.submitted)} acknowledged transactions never committed"


def test_paused_primary_is_replaced_then_rejoins(net):
    """SIGSTOP the primary (a hung node: its sockets stay open, it answers nothing):
    the others change view and keep committing; after SIGCONT it catches up and follows."""
    import signal

    net.start_connected()
    bank0 = Key.from_file(os.path.join(net.directory, "keys", "BANK0.json"))
    nonce = iter(range(1, 10**6))

    def open_account(node: int, name: str) -> dict:
        raw, _ = sign_tx("test-chain", "account.open", {"id": f"BANK0:{name}", "owner": "BANK0", "key": bank0.public},
                         [bank0], next(nonce), now_ms() + 600_000)
        code, answer = http("POST", f"{net.rpc(node)}/v1/txs?wait=commit&timeout=40", raw, "application/msgpack")
        assert code == 200 and answer["result"]["code"] == "ok", answer
        return answer

    open_account(1, "before")
    status = http("GET", f"{net.rpc(1)}/v1/status")[1]
    primary = [v["public_key"] for v in net.genesis["validators"]].index(status["primary"])
    others = [i for i in range(4) if i != primary]
    net.processes[primary].send_signal(signal.SIGSTOP)
    try:
        paused_at = time.time()
        committed = open_account(others[0], "during")
        print(f"primary node{primary} paused: a new transaction committed after {time.time() - paused_at:.2f} s")
        for i in others:
            assert http("GET", f"{net.rpc(i)}/v1/status")[1]["view"] >= 1
        open_account(others[1], "during2")
    finally:
        net.processes[primary].send_signal(signal.SIGCONT)
    target = max(height_of(net, i) for i in others)
    net.wait_height(primary, target, timeout=60)
    # It follows the new view: a transaction submitted to it commits everywhere.
    answer = open_account(primary, "after")
    for i in range(4):
        net.wait_height(i, answer["height"], timeout=30)
        block = http("GET", f"{net.rpc(i)}/v1/blocks/{committed['height']}")[1]
        assert block["hash"] == http("GET", f"{net.rpc(others[0])}/v1/blocks/{committed['height']}")[1]["hash"]


def test_acknowledged_transactions_survive_kill9_before_gossip(net):
    """A node acknowledges ("pending") only what it synced: a backup takes submissions while
    none of its peers run (so nothing leaves it by gossip, and as a backup it proposes
    nothing that its write-ahead log would keep), is killed with SIGKILL, and after a
    restart next to its peers every acknowledged transaction commits."""
    from ledger.store import LevelDBStore

    backup = 1
    net.start(backup)
    status = net.wait_rpc(backup)
    assert status["primary"] != status["validator"]
    bank0 = Key.from_file(os.path.join(net.directory, "keys", "BANK0.json"))
    raws = [sign_tx("test-chain", "account.open", {"id": f"BANK0:ack{n}", "owner": "BANK0", "key": bank0.public},
                    [bank0], n, now_ms() + 600_000) for n in range(1, 206)]
    acknowledged = []
    code, answer = submit_batch(net.rpc(backup), [raw for raw, _ in raws[:200]])
    assert code == 200, answer
    for (_, tx_id), result in zip(raws[:200], answer["results"]):
        assert result == {"tx_id": tx_id, "status": "pending"}, result
        acknowledged.append(tx_id)
    for raw, tx_id in raws[200:]:
        code, answer = http("POST", f"{net.rpc(backup)}/v1/txs", raw, "application/msgpack")
        assert (code, answer) == (202, {"tx_id": tx_id, "status": "pending"})
        acknowledged.append(tx_id)
    net.kill(backup)

    net.start_all()
    for i in range(4):
        net.wait_rpc(i)
    deadline = time.time() + 60
    pending = set(acknowledged)
    while pending and time.time() < deadline:
        for tx_id in sorted(pending):
            code, answer = http("GET", f"{net.rpc(2)}/v1/txs/{tx_id}")
            if code == 200 and answer["status"] == "committed":
                assert answer["result"]["code"] == "ok", answer
                pending.discard(tx_id)
        time.sleep(0.2)
    assert not pending, f"{len(pending)} of {len(acknowledged)} acknowledged transactions were lost"
    tip = max(height_of(net, i) for i in range(4))
    for i in range(4):
        net.wait_height(i, tip)
    net.stop_all()
    # Committed, so settled: the backup keeps no pending record for any of them.
    store = LevelDBStore(os.path.join(net.home(backup), "data"), create=False)
    try:
        assert store.pending_items() == []
    finally:
        store.close()
