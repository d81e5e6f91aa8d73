"""Four real `ledger node` processes under transaction load; one validator (f = 1) is cut
off the network like a pulled cable, then the cut heals.

Every peer link that involves the victim runs through a `tests.tcpproxy.TcpProxy` on
127.0.0.1: the other nodes' `[[peers]]` entry for the victim points at a proxy in front
of the victim's p2p port, and the victim's entries for the others point at proxies in
front of theirs (the configs `ledger net init` wrote are rewritten before any node
starts). `cut()` stops every byte on those links while the sockets stay open; `heal()`
closes the stalled connections, so the nodes redial through the working proxies.

The load submits batches round-robin to all four nodes, the cut-off one included (it
keeps answering "pending"). Checked afterwards: every transaction any node answered
"pending" to is committed, at the same height and index on all four nodes; all four
hold identical block hashes at every height; the victim caught up. Done once with the
primary cut off (the others change view and go on committing) and once with a backup.
"""
from __future__ import annotations

import os
import random
import re
import threading
import time
import urllib.request

import pytest

from ledger.network import PeerConfig, load_config, write_config
from tests.contract_client import Key, http, sign_tx, submit_batch
from tests.netutil import Network
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.slow

CHAIN = "test-chain"
CUT_MIN_S = 6.0          # > the 2 s progress timeout (40 ticks of 50 ms), and the doubled 4 s
CUT_MAX_S = 25.0         # the others must have committed past the cut by then
AFTER_HEAL_LOAD_S = 3.0  # load keeps running this long after the heal
DRAIN_TIMEOUT_S = 30.0


def now_ms() -> int:
    return int(time.time() * 1000)


def status_of(net: Network, i: int) -> dict:
    code, body = http("GET", f"{net.rpc(i)}/v1/status", timeout=5)
    assert code == 200, body
    return body


def metrics_of(net: Network, i: int, names: tuple[str, ...] = (), prefixes: tuple[str, ...] = ()) -> dict:
    with urllib.request.urlopen(f"{net.rpc(i)}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            if key.removeprefix("ledger_") in names or key.removeprefix("ledger_").startswith(prefixes):
                values[key.removeprefix("ledger_")] = value
    return values


def relink_gaps_ms(log_text: str, node: str, since: float) -> dict[str, int]:
    """From a node's log: per peer, the milliseconds between its first "closed the link" at or
    after `since` (epoch s) and the next "linked with" (the window a 50 ms tick may miss)."""
    closed, gaps = {}, {}
    for line in log_text.splitlines():
        match = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) p2p\.network INFO " + node
                         + r": (?:(node\d) closed the link|linked with (node\d))", line)
        if not match:
            continue
        when = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) + int(match.group(2)) / 1000
        if when < since - 0.01:
            continue
        if match.group(3) and match.group(3) not in closed:
            closed[match.group(3)] = when
        elif match.group(4) in closed and match.group(4) not in gaps:
            gaps[match.group(4)] = round((when - closed[match.group(4)]) * 1000)
    return gaps


class RoundRobinLoad:
    """Submits transfer batches to every node in turn (a cut-off node too) from a thread,
    and remembers every transaction a node answered "pending" to."""

    def __init__(self, net: Network, alice: Key, batch: int = 25, pause_s: float = 0.05):
        self.net, self.alice, self.batch, self.pause_s = net, alice, batch, pause_s
        self.acknowledged: dict[str, tuple[int, float]] = {}  # tx id -> (node, when)
        self.errors: list[str] = []
        self.nonce = 10**6
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="load", daemon=True)

    def run(self) -> None:
        node = 0
        while not self.stop.is_set():
            raws = []
            for _ in range(self.batch):
                self.nonce += 1
                raws.append(sign_tx(CHAIN, "transfer", {"from": "BANK0:alice", "to": "BANK1:bob", "currency": "USD",
                                                       "amount": 1}, [self.alice], self.nonce, now_ms() + 600_000))
            try:
                code, answer = submit_batch(self.net.rpc(node), [raw for raw, _ in raws])
            except OSError as exc:
                self.errors.append(f"node{node}: {exc!r}")
                code, answer = None, None
            if code == 200:
                when = time.time()
                for (_, tx_id), result in zip(raws, answer["results"]):
                    if result.get("status") == "pending":
                        self.acknowledged[tx_id] = (node, when)
                    else:
                        self.errors.append(f"node{node}: {result}")
            elif code is not None:
                self.errors.append(f"node{node}: HTTP {code} {answer}")
            node = (node + 1) % self.net.validators
            self.stop.wait(self.pause_s)

    def __enter__(self) -> "RoundRobinLoad":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


class PartitionedNetwork:
    """A 4-validator network whose links to `victim` all run through TCP proxies."""

    def __init__(self, directory: str, victim: int):
        self.net = Network(directory, validators=4)
        self.victim = victim
        # node i -> a proxy in front of i's real p2p port: the victim's is dialed by the others,
        # each other node's only by the victim (links among the others stay direct).
        self.proxies: dict[int, TcpProxy] = {}
        try:
            self._route_victim_links_through_proxies()
        except BaseException:
            self.close()
            raise

    def _route_victim_links_through_proxies(self) -> None:
        net, victim = self.net, self.victim
        configs = {i: load_config(net.home(i)) for i in range(net.validators)}
        for i, config in configs.items():
            self.proxies[i] = TcpProxy(config.p2p_port, name=f"proxy->node{i}").start()
        for i, config in configs.items():
            path = os.path.join(net.home(i), "config.toml")
            with open(path) as handle:
                original = handle.read()
            self._write(path, config, config.peers)
            with open(path) as handle:
                # Rewriting the untouched config reproduces it byte for byte: nothing else changes.
                assert handle.read() == original, f"write_config does not reproduce {path}"
            if i == victim:
                peers = [PeerConfig(p.name, p.public_key, "127.0.0.1", self.proxies[self._index(p.name)].port)
                         for p in config.peers]
            else:
                peers = [PeerConfig(p.name, p.public_key, "127.0.0.1", self.proxies[victim].port)
                         if p.name == f"node{victim}" else p for p in config.peers]
            self._write(path, config, peers)
            assert load_config(net.home(i)).peers == tuple(peers)

    @staticmethod
    def _index(name: str) -> int:
        assert name.startswith("node"), name
        return int(name[4:])

    @staticmethod
    def _write(path: str, config, peers) -> None:
        write_config(path, name=config.name, rpc=(config.rpc_host, config.rpc_port),
                     p2p=(config.p2p_host, config.p2p_port), peers=list(peers))

    def cut(self) -> None:
        for proxy in self.proxies.values():
            proxy.cut()

    def heal(self) -> None:
        for proxy in self.proxies.values():
            proxy.heal()

    def close(self) -> None:
        try:
            self.net.stop_all()
        finally:
            for proxy in self.proxies.values():
                proxy.stop()


@pytest.fixture
def partitioned(tmp_path):
    made: list[PartitionedNetwork] = []

    def make(victim: int) -> PartitionedNetwork:
        network = PartitionedNetwork(str(tmp_path / "net"), victim)
        made.append(network)
        return network

    try:
        yield make
    finally:
        for network in made:
            network.close()


def open_accounts(net: Network) -> Key:
    bank0 = Key.from_file(os.path.join(net.directory, "keys", "BANK0.json"))
    bank1 = Key.from_file(os.path.join(net.directory, "keys", "BANK1.json"))
    alice, bob = Key(os.urandom(32)), Key(os.urandom(32))
    setup = [
        (1, sign_tx(CHAIN, "account.open", {"id": "BANK0:alice", "owner": "BANK0", "key": alice.public}, [bank0], 1, now_ms() + 600_000)),
        (2, sign_tx(CHAIN, "account.open", {"id": "BANK1:bob", "owner": "BANK1", "key": bob.public}, [bank1], 2, now_ms() + 600_000)),
        (3, sign_tx(CHAIN, "issue", {"account": "BANK0:alice", "currency": "USD", "amount": 10**9}, [bank0], 3, now_ms() + 600_000)),
    ]
    for node, (raw, _) in setup:
        code, answer = http("POST", f"{net.rpc(node)}/v1/txs?wait=commit&timeout=30", raw, "application/msgpack")
        assert code == 200 and answer["result"]["code"] == "ok", answer
    return alice


class ChainReader:
    """Reads each node's blocks once (a committed block never changes) and indexes its txs."""

    def __init__(self, net: Network):
        self.net = net
        self.hashes: dict[int, dict[int, str]] = {i: {} for i in range(net.validators)}
        self.places: dict[int, dict[str, tuple[int, int]]] = {i: {} for i in range(net.validators)}

    def refresh(self) -> None:
        for i in range(self.net.validators):
            tip = status_of(self.net, i)["height"]
            for h in range(len(self.hashes[i]) + 1, tip + 1):
                code, block = http("GET", f"{self.net.rpc(i)}/v1/blocks/{h}", timeout=10)
                assert code == 200, (i, h, block)
                self.hashes[i][h] = block["hash"]
                for index, tx_id in enumerate(block["tx_ids"]):
                    self.places[i][tx_id] = (h, index)

    def missing(self, tx_ids) -> set[str]:
        return {tx_id for tx_id in tx_ids if any(tx_id not in self.places[i] for i in range(self.net.validators))}


def run_partition(p: PartitionedNetwork, *, expect_view_change: bool) -> None:
    net, victim = p.net, p.victim
    others = [i for i in range(net.validators) if i != victim]
    net.start_connected()
    alice = open_accounts(net)
    validator_keys = [v["public_key"] for v in net.genesis["validators"]]
    primary = validator_keys.index(status_of(net, others[0])["primary"])
    if expect_view_change:
        assert primary == victim, f"node{victim} was to be cut off as the primary, but node{primary} is"
    else:
        assert primary != victim, f"node{victim} was to be cut off as a backup, but it is the primary"
    role = "primary" if expect_view_change else "backup"
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    cut_s = CUT_MIN_S + rng.random() * 1.5  # a little jitter in where the cut falls in a round
    print(f"\n[{role} cut] victim node{victim}, seed {seed}, cut at least {cut_s:.2f} s, "
          f"proxies {sorted((i, pr.port) for i, pr in p.proxies.items())}")

    with RoundRobinLoad(net, alice) as load:
        time.sleep(2 + rng.random())
        # ---- cut
        height_at_cut = max(status_of(net, i)["height"] for i in others)
        victim_height_at_cut = status_of(net, victim)["height"]
        acknowledged_before_cut = len(load.acknowledged)
        cut_at = time.time()
        p.cut()
        resumed_s = None
        while True:
            elapsed = time.time() - cut_at
            heights = [status_of(net, i)["height"] for i in others]
            # One block may have been in flight at the cut; the one after it needs the three alone.
            if resumed_s is None and min(heights) >= height_at_cut + 2:
                resumed_s = elapsed
            if (resumed_s is not None and elapsed >= cut_s) or elapsed > CUT_MAX_S:
                break
            time.sleep(0.05)
        others_status = {i: status_of(net, i) for i in others}
        victim_status = status_of(net, victim)
        assert resumed_s is not None, (
            f"commits did not continue among node{others} within {CUT_MAX_S} s of the cut "
            f"(heights {[s['height'] for s in others_status.values()]}, at cut {height_at_cut})")
        views = sorted(s["view"] for s in others_status.values())
        if expect_view_change:
            assert min(views) >= 1, f"no view change among the others after the primary was cut: views {views}"
        acknowledged_by_victim_during_cut = [tx for tx, (node, when) in load.acknowledged.items()
                                             if node == victim and when >= cut_at]
        assert acknowledged_by_victim_during_cut, "the cut-off node acknowledged nothing while it was cut off"
        cut_height_others = min(s["height"] for s in others_status.values())
        print(f"[{role} cut] commits among the others resumed {resumed_s:.2f} s after the cut "
              f"(height {height_at_cut} -> {cut_height_others} during the cut, views {views}); "
              f"victim stayed at {victim_status['height']} (was {victim_height_at_cut}), "
              f"view {victim_status['view']}, acknowledged {len(acknowledged_by_victim_during_cut)} txs while cut off")
        # ---- heal
        target = max(status_of(net, i)["height"] for i in others)
        healed_at = time.time()
        p.heal()
        deadline = healed_at + 30
        while status_of(net, victim)["height"] < target and time.time() < deadline:
            time.sleep(0.05)
        caught_up_s = time.time() - healed_at
        victim_height = status_of(net, victim)["height"]
        assert victim_height >= target, (
            f"node{victim} stayed at height {victim_height} < {target} for 30 s after the heal:\n"
            f"{net.log(victim)[-4000:]}")
        print(f"[{role} cut] node{victim} caught up to height {target} {caught_up_s:.2f} s after the heal")
        time.sleep(AFTER_HEAL_LOAD_S)
    assert len(load.acknowledged) > acknowledged_before_cut
    assert not [e for e in load.errors], f"load errors: {load.errors[:10]}"

    # ---- (1) every acknowledged tx commits on all four nodes, at the same place
    chains = ChainReader(net)
    acknowledged = set(load.acknowledged)
    drain_started = time.time()
    missing = acknowledged
    while time.time() - drain_started < DRAIN_TIMEOUT_S:
        chains.refresh()
        missing = chains.missing(acknowledged)
        if not missing:
            break
        time.sleep(0.3)
    victim_cut_txs = set(acknowledged_by_victim_during_cut)
    if missing:
        counters = {i: metrics_of(net, i, ("height", "view", "mempool_size", "peers_connected",
                                           "node_regossiped_total", "node_txs_submitted_total"))
                    for i in range(net.validators)}
        links = [line for line in net.log(victim).splitlines() if "linked with" in line or "closed the link" in line]
        gaps = relink_gaps_ms(net.log(victim), f"node{victim}", healed_at)
        sample = sorted(missing)[:3]
        where = {tx: [(i, http("GET", f"{net.rpc(i)}/v1/txs/{tx}", timeout=5)) for i in range(net.validators)]
                 for tx in sample}
        pytest.fail(f"{len(missing)} of {len(acknowledged)} acknowledged transactions were not committed on all "
                    f"nodes within {DRAIN_TIMEOUT_S} s ({len(missing & victim_cut_txs)} of them acknowledged by "
                    f"the cut-off node{victim} during the cut); by node: "
                    f"{ {i: sum(1 for t in missing if load.acknowledged[t][0] == i) for i in range(4)} }; "
                    f"counters {counters}; sample {where}; seed {seed}; node{victim}'s links down at the heal "
                    f"for (ms) {gaps}; "
                    f"heal at {time.strftime('%H:%M:%S', time.localtime(healed_at))}.{int(healed_at * 1000) % 1000:03d}; "
                    f"node{victim}'s links:\n" + "\n".join(links[-12:]))
    print(f"[{role} cut] all {len(acknowledged)} acknowledged txs committed on all four nodes "
          f"({len(victim_cut_txs)} acknowledged by node{victim} while cut off) "
          f"{time.time() - drain_started:.2f} s after the load stopped")
    for tx_id in acknowledged:
        places = {chains.places[i][tx_id] for i in range(net.validators)}
        assert len(places) == 1, f"{tx_id} sits at different places: {places}"
    # The RPC's own answer agrees, for the victim's cut-time txs and a random sample.
    spot = sorted(victim_cut_txs)[:60] + rng.sample(sorted(acknowledged), min(60, len(acknowledged)))
    for tx_id in spot:
        place = chains.places[0][tx_id]
        for i in range(net.validators):
            code, answer = http("GET", f"{net.rpc(i)}/v1/txs/{tx_id}", timeout=5)
            assert code == 200 and answer["status"] == "committed", (i, tx_id, answer)
            assert (answer["height"], answer["index"]) == place, (i, tx_id, answer, place)

    # ---- (2) one chain: the same height and the same block hash at every height
    tips = {i: status_of(net, i)["height"] for i in range(net.validators)}
    deadline = time.time() + 15
    while len(set(tips.values())) > 1 and time.time() < deadline:
        time.sleep(0.2)
        tips = {i: status_of(net, i)["height"] for i in range(net.validators)}
    assert len(set(tips.values())) == 1, f"the nodes settled at different heights: {tips}"
    chains.refresh()
    tip = tips[0]
    for h in range(1, tip + 1):
        hashes = {i: chains.hashes[i][h] for i in range(net.validators)}
        assert len(set(hashes.values())) == 1, f"fork at height {h}: {hashes}"
    # ---- (3) the victim caught up and takes part again
    final = {i: status_of(net, i) for i in range(net.validators)}
    assert final[victim]["last_block_hash"] == final[others[0]]["last_block_hash"]
    assert all(all(peer["connected"] for peer in s["peers"]) for s in final.values()), final
    # It follows the others' view again (a replica left alone in a higher view change would
    # still follow commits by their certificates, but never vote: the network would be down
    # to its last f of slack).
    deadline = time.time() + 5
    while len({s["view"] for s in final.values()}) > 1 and time.time() < deadline:
        time.sleep(0.2)
        final = {i: status_of(net, i) for i in range(net.validators)}
    if len({s["view"] for s in final.values()}) > 1:
        consensus = {i: {k.removeprefix("consensus_").removesuffix("_total"): v
                         for k, v in metrics_of(net, i, ("view",), prefixes=("consensus_view", "consensus_synced",
                                                                         "consensus_commits")).items()}
                     for i in range(net.validators)}
        pytest.fail(f"node{victim} is at height {final[victim]['height']} like the others but stays in another view: "
                    f"views {[final[i]['view'] for i in range(4)]}; consensus counters {consensus}; seed {seed}")
    stats = {i: pr.stats() for i, pr in p.proxies.items()}
    view_changes = {i: {k.removeprefix("consensus_view_change_").removesuffix("_total"): int(v)
                        for k, v in metrics_of(net, i, prefixes=("consensus_view_change_",)).items()}
                    for i in range(net.validators)}
    regossiped = {i: metrics_of(net, i, ("node_regossiped_total",)).get("node_regossiped_total", "0")
                  for i in range(net.validators)}
    print(f"[{role} cut] final height {tip} on all four nodes, views {[final[i]['view'] for i in range(4)]}; "
          f"view changes started by reason {view_changes}; txs regossiped to new links {regossiped}; "
          f"proxy bytes dropped {[stats[i]['bytes_dropped'] for i in range(4)]}; node{victim}'s links were down "
          f"at the heal for (ms) {relink_gaps_ms(net.log(victim), f'node{victim}', healed_at)}")


def test_cut_off_primary_is_replaced_and_catches_up(partitioned):
    # node0 = validators[0] is the primary of view 0.
    run_partition(partitioned(0), expect_view_change=True)


def test_cut_off_backup_catches_up(partitioned):
    # node2 is primary neither of view 0 nor of view 1.
    run_partition(partitioned(2), expect_view_change=False)
