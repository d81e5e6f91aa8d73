"""The seeded simulation loop: N production replicas, a faulty network, fake ledgers.

One seed decides everything (`random_config`): network faults before GST (loss,
duplication, delay and reordering, partitions that heal), crash/restart of honest nodes
(a restarted replica gets only its durable WAL records and its committed chain; a crash
may cut an action list in the middle), and up to f Byzantine nodes with a random set of
behaviours (`byzantine.KINDS`). Time advances in ticks; in each tick the simulator
delivers due messages, then due driver answers, then ticks every live replica. After
every step of an honest replica the `Checker` runs; before each of its actions too.

At GST every network fault ends and crashed nodes are back. From then on all honest
replicas must commit again within `liveness_bound_ticks`, and the run continues until
every honest replica reached the goal height (at least `heights`, and
`heights_after_gst` above the height at GST). Every enabled fault kind must have fired.
"""
from __future__ import annotations

import hashlib
import heapq
import random
from collections import Counter
from dataclasses import dataclass, field

from ledger import codec, crypto
from ledger.crypto import KeyPair

from consensus import wal as wal_records
from consensus.actions import (
    Alarm,
    Broadcast,
    BuildProposal,
    CheckBlock,
    CommitBlock,
    FetchBlocks,
    Forget,
    Persist,
    Send,
)
from consensus.events import BlockChecked, ProposalBuilt, Receive, Synced, Tick, WorkChanged
from consensus.replica import Replica, ReplicaConfig

from .byzantine import KINDS, PRIMARY_KINDS, Byzantine
from .checker import Checker, InvariantViolation
from .ledger_app import EMPTY_PAYLOAD, PAYLOAD_PREFIX, FakeLedger, clock_ms
from .network import Network

CHAIN_ID = "sim-chain"
EXTENSION_STEP_TICKS = 20
EXTENSION_TICKS_MAX = 400


class SimulationFailure(AssertionError):
    """A failed seed; the message says how to reproduce it."""


@dataclass
class FaultPlan:
    gst_tick: int = 1
    drop_probability: float = 0.0
    duplicate_probability: float = 0.0
    delay_ticks_max: int = 2
    partitions: list = field(default_factory=list)  # (start tick, end tick, sides: tuple of frozensets)
    crashes: list = field(default_factory=list)  # (node index, crash tick, restart tick)
    byzantine: dict = field(default_factory=dict)  # node index -> frozenset of behaviour kinds

    def enabled(self) -> list[str]:
        """Fault counters that must be non-zero at the end of the run."""
        kinds = []
        if self.drop_probability:
            kinds.append("drop")
        if self.duplicate_probability:
            kinds.append("duplicate")
        if self.delay_ticks_max > 1:
            kinds.append("reorder")
        if self.partitions:
            kinds.append("partition")
        if self.crashes:
            kinds += ["crash", "restart"]
        for behaviours in self.byzantine.values():
            kinds += ["byzantine." + kind for kind in sorted(behaviours)]
        return sorted(set(kinds))

    def describe(self) -> str:
        parts = [f"gst={self.gst_tick}", f"delay<={self.delay_ticks_max}"]
        if self.drop_probability:
            parts.append(f"drop={self.drop_probability:.2f}")
        if self.duplicate_probability:
            parts.append(f"dup={self.duplicate_probability:.2f}")
        for start, end, sides in self.partitions:
            parts.append(f"partition[{start}-{end}]={[sorted(side) for side in sides]}")
        for index, crash, restart in self.crashes:
            parts.append(f"crash(node{index})[{crash}-{restart}]")
        for index, behaviours in sorted(self.byzantine.items()):
            parts.append(f"byzantine(node{index})={sorted(behaviours)}")
        return " ".join(parts)


@dataclass
class SimConfig:
    seed: int
    n: int
    faults: FaultPlan = field(default_factory=FaultPlan)
    heights: int = 20
    heights_after_gst: int = 5
    progress_timeout_ticks: int = 12
    timeout_doublings_max: int = 4
    stall_after_ticks: int = 100  # the fake mempool reports `stalled` after this long without txs committed
    liveness_bound_ticks: int | None = None  # default: see liveness_bound()
    max_ticks: int = 20000
    work: bool = True
    require_faults_fired: bool = True


def liveness_bound(config: SimConfig) -> int:
    """Ticks after GST by which every honest replica must have committed again.

    After GST a view that has an honest primary commits within one (maximal) timeout;
    at most f views in a row have a Byzantine primary, one more may be needed to gather
    the replicas into one view, and one for catch-up and message delays.
    """
    if config.liveness_bound_ticks is not None:
        return config.liveness_bound_ticks
    f = (config.n - 1) // 3
    timeout_max = config.progress_timeout_ticks << config.timeout_doublings_max
    return (f + 3) * timeout_max + 100


def random_config(seed: int, n: int) -> SimConfig:
    """The fault plan of one seed."""
    rng = random.Random(f"ledger-sim/{n}/{seed}")
    f = (n - 1) // 3
    gst = rng.randint(60, 200)
    plan = FaultPlan(gst_tick=gst, delay_ticks_max=rng.randint(1, 4))
    if rng.random() < 0.6:
        plan.drop_probability = rng.uniform(0.05, 0.2)
    if rng.random() < 0.4:
        plan.duplicate_probability = rng.uniform(0.05, 0.15)
    byzantine_count = rng.randint(0, f)
    indices = list(range(n))
    if byzantine_count:
        # Node 0 is the primary of view 0, the one place a Byzantine primary surely acts.
        first = 0 if rng.random() < 0.6 else rng.randrange(n)
        chosen = [first] + rng.sample([i for i in indices if i != first], byzantine_count - 1)
        for index in chosen:
            behaviours = set(rng.sample(KINDS[len(PRIMARY_KINDS):], rng.randint(1, 4)))
            if index == 0 and rng.random() < 0.8:
                behaviours.add(rng.choice(PRIMARY_KINDS))
            plan.byzantine[index] = frozenset(behaviours)
    honest = [i for i in indices if i not in plan.byzantine]
    start = 1
    for _ in range(rng.randint(0, 2)):
        if start + 30 > gst - 10:
            break
        begin = rng.randint(start, gst - 40)
        end = rng.randint(begin + 20, gst - 10)
        shuffled = indices[:]
        rng.shuffle(shuffled)
        cut = rng.randint(1, n - 1)
        plan.partitions.append((begin, end, (frozenset(shuffled[:cut]), frozenset(shuffled[cut:]))))
        start = end + 1
    for index in rng.sample(honest, min(len(honest), rng.randint(0, 2))):
        crash = rng.randint(5, gst - 30)
        restart = rng.randint(crash + 3, min(crash + 60, gst - 1))
        plan.crashes.append((index, crash, restart))
    return SimConfig(seed=seed, n=n, faults=plan)


class Node:
    """One validator: its replica and the simulated driver state that survives crashes."""

    def __init__(self, index: int, key: KeyPair, ledger: FakeLedger):
        self.index = index
        self.name = f"node{index}"
        self.key = key
        self.ledger = ledger  # durable: the committed chain
        self.wal: dict[bytes, bytes] = {}  # durable: every Persist performed
        self.replica: Replica | None = None
        self.byzantine: Byzantine | None = None
        self.alive = False
        self.incarnation = 0
        self.crash_in_step = False
        self.view_seen = 0
        self.height_seen = 0
        self.work: tuple[bool, bool] | None = None
        self.last_tx_tick = 0
        self.alarms: list[str] = []
        self.sent_messages = 0


@dataclass(frozen=True)
class _FetchJob:
    from_height: int
    peers: tuple[bytes, ...]


@dataclass
class SimResult:
    seed: int
    n: int
    ticks: int
    heights: int
    views_max: int
    liveness_ticks: int | None
    faults: Counter
    replica_counters: Counter
    trace_hash: str

    def summary(self) -> str:
        fired = ", ".join(f"{kind}={count}" for kind, count in sorted(self.faults.items()))
        return (
            f"seed={self.seed} n={self.n} ticks={self.ticks} heights={self.heights} max_view={self.views_max} "
            f"commit_after_gst={self.liveness_ticks} view_changes={self.replica_counters['view_changes_started']} "
            f"fetches={self.replica_counters['fetches']} faults: {fired or 'none'}"
        )


class Simulation:
    def __init__(self, config: SimConfig):
        self.config = config
        master = random.Random(f"ledger-sim-run/{config.n}/{config.seed}")
        self.rng = random.Random(master.getrandbits(64))  # crashes mid-action-list
        self.app_rng = random.Random(master.getrandbits(64))  # payloads and driver latencies
        self.faults: Counter = Counter()
        keys = [KeyPair.from_seed(hashlib.sha256(b"sim validator %d" % i).digest()) for i in range(config.n)]
        self.validators = tuple(key.public_key for key in keys)
        self.index_of = {key: index for index, key in enumerate(self.validators)}
        self._verify_memo: dict[tuple[bytes, bytes, bytes, bytes], bool] = {}
        window, views = 4, 8
        self.replica_config = ReplicaConfig(
            chain_id=CHAIN_ID,
            validators=self.validators,
            progress_timeout_ticks=config.progress_timeout_ticks,
            stall_ticks=config.progress_timeout_ticks,
            timeout_doublings_max=config.timeout_doublings_max,
            retransmit_ticks=config.progress_timeout_ticks,
            catchup_grace_ticks=4,
            sync_timeout_ticks=60,
            height_window=window,
            view_window=views,
        )
        n = config.n
        self.checker = Checker(CHAIN_ID, self.validators, self.verify, 3 * n * window * (views + 1) + 12 * n * (views + 1))
        self.network = Network(random.Random(master.getrandbits(64)), self.faults, config.faults.delay_ticks_max)
        self.nodes = [Node(index, key, FakeLedger(CHAIN_ID, self.validators)) for index, key in enumerate(keys)]
        for index, behaviours in config.faults.byzantine.items():
            self.nodes[index].byzantine = Byzantine(
                behaviours, random.Random(master.getrandbits(64)), keys[index], CHAIN_ID, self.validators, self.faults
            )
        self.now = 0
        self._events: list = []
        self._sequence = 0
        self._trace = hashlib.sha256()
        # Before GST there is always work, so every fault meets traffic; at GST the goal
        # becomes fixed (see _apply_fault_schedule).
        self.goal = config.heights if config.faults.gst_tick <= 1 else 2**62
        self.gst_tick = config.faults.gst_tick  # may move later if a fault has not fired yet
        self.gst_height: int | None = None
        self.liveness_ticks: int | None = None
        for node in self.nodes:
            self._boot(node)

    # -- helpers -----------------------------------------------------------------------

    def verify(self, public_key: bytes, tag: bytes, message: bytes, signature: bytes) -> bool:
        """crypto.verify with a memo shared by all replicas of this run (a pure function)."""
        key = (public_key, tag, message, signature)
        result = self._verify_memo.get(key)
        if result is None:
            result = self._verify_memo[key] = crypto.verify(public_key, tag, message, signature)
        return result

    @property
    def honest(self) -> list[Node]:
        return [node for node in self.nodes if node.byzantine is None]

    def _schedule(self, node: Node, delay: int, item) -> None:
        self._sequence += 1
        heapq.heappush(self._events, (self.now + delay, self._sequence, node.index, node.incarnation, item))

    def _boot(self, node: Node) -> None:
        node.incarnation += 1
        node.replica = Replica(
            self.replica_config, node.key, node.ledger.height, node.ledger.head_hash, sorted(node.wal.items()),
            committed_certificate=node.ledger.head_certificate, verify_signature=self.verify,
        )
        node.alive = True
        node.work = None
        node.last_tx_tick = self.now
        self._update_work(node, force=True)

    def _crash(self, node: Node) -> None:
        # What the replica had only in memory is lost; what it must never go below is
        # what reached durable storage (its view record, its committed chain).
        node.view_seen = _durable_view(node.wal)
        node.height_seen = node.ledger.height
        node.alive = False
        node.replica = None
        node.crash_in_step = False
        node.incarnation += 1
        self.network.drop_to(node.index)
        self.faults["crash"] += 1

    def _update_work(self, node: Node, force: bool = False) -> None:
        has_work = self.config.work and node.ledger.height < self.goal
        stalled = has_work and self.now - node.last_tx_tick > self.config.stall_after_ticks
        if force or node.work != (has_work, stalled):
            node.work = (has_work, stalled)
            self._schedule(node, self.app_rng.randint(0, 1), WorkChanged(has_work, stalled))

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> SimResult:
        try:
            while not self._finished():
                if self.now >= self.config.max_ticks:
                    heights = [node.ledger.height for node in self.honest]
                    raise InvariantViolation(f"goal {self.goal} not reached in {self.now} ticks: heights {heights}")
                self.step_tick()
            self._check_faults_fired()
        except Exception as exc:
            raise SimulationFailure(
                f"seed {self.config.seed} (n={self.config.n}) failed at tick {self.now}: {type(exc).__name__}: {exc}\n"
                f"faults: {self.config.faults.describe()}\n"
                f"reproduce: scripts/simulate --n {self.config.n} --seed {self.config.seed}"
            ) from exc
        return self.result()

    def _finished(self) -> bool:
        return self.gst_height is not None and all(node.ledger.height >= self.goal for node in self.honest)

    def step_tick(self) -> None:
        self.now += 1
        self._apply_fault_schedule()
        for source, target, data in self.network.due(self.now):
            node = self.nodes[target]
            if node.alive:
                self._step(node, Receive(self.validators[source], data))
            else:
                self.faults["lost_in_crash"] += 1
        while self._events and self._events[0][0] <= self.now:
            _, _, index, incarnation, item = heapq.heappop(self._events)
            node = self.nodes[index]
            if not node.alive or node.incarnation != incarnation:
                continue
            if type(item) is _FetchJob:
                self._fetch(node, item)
            else:
                self._step(node, item)
        for node in self.nodes:
            if node.alive:
                self._step(node, Tick())
        for node in self.nodes:
            if node.byzantine is not None and node.alive:
                injected = node.byzantine.inject(node.replica.view, node.replica.height, node.ledger.head_certificate)
                for target, data in injected:
                    self.network.send(self.now, node.index, target, data)
            if node.alive:
                self._update_work(node)
        self._check_liveness()

    def _apply_fault_schedule(self) -> None:
        plan = self.config.faults
        now = self.now
        if now == 1 and now < plan.gst_tick:
            self.network.drop_probability = plan.drop_probability
            self.network.duplicate_probability = plan.duplicate_probability
        for start, end, sides in plan.partitions:
            if now == start:
                self.network.partition = sides
            elif now == end:
                self.network.partition = None
        for index, crash, restart in plan.crashes:
            node = self.nodes[index]
            if now == crash and node.alive:
                node.crash_in_step = True  # its next step performs only part of its actions
            elif now == restart and not node.alive:
                self._boot(node)
                self.faults["restart"] += 1
        if now == self.gst_tick and self._extend_faulty_phase():
            return
        if now == self.gst_tick:
            self.network.heal()
            for node in self.nodes:
                node.crash_in_step = False
                if not node.alive:
                    self._boot(node)
                    self.faults["restart"] += 1
            self.gst_height = max(node.ledger.height for node in self.honest)
            self.goal = max(self.config.heights, self.gst_height + self.config.heights_after_gst)
            for node in self.nodes:
                self._update_work(node)

    def _extend_faulty_phase(self) -> bool:
        """Postpone GST while an enabled network fault has not met any traffic yet.

        A window of loss or a partition can pass while the nodes it affects are crashed
        or quiet; the faulty phase then lasts (at most EXTENSION_TICKS_MAX more ticks)
        until each such fault acted at least once, so that every run tests what it says.
        """
        plan = self.config.faults
        if self.now - plan.gst_tick >= EXTENSION_TICKS_MAX:
            return False
        missing = [kind for kind in ("drop", "duplicate", "partition") if kind in plan.enabled() and not self.faults[kind]]
        if not missing:
            return False
        if "partition" in missing and self.network.partition is None:
            self.network.partition = plan.partitions[-1][2]  # the last partition, once more
        self.gst_tick += EXTENSION_STEP_TICKS
        return True

    def _check_liveness(self) -> None:
        if self.gst_height is None or self.liveness_ticks is not None:
            return
        elapsed = self.now - self.gst_tick
        if all(node.ledger.height > self.gst_height for node in self.honest):
            self.liveness_ticks = elapsed
        elif elapsed > liveness_bound(self.config):
            heights = {node.name: node.ledger.height for node in self.honest}
            raise InvariantViolation(
                f"no commit by every honest replica within {liveness_bound(self.config)} ticks after GST "
                f"(height at GST {self.gst_height}, now {heights})"
            )

    def _check_faults_fired(self) -> None:
        if not self.config.require_faults_fired:
            return
        silent = [kind for kind in self.config.faults.enabled() if not self.faults[kind]]
        if silent:
            raise InvariantViolation(f"enabled faults never fired: {silent}")

    # -- one replica step and its actions ----------------------------------------------

    def _step(self, node: Node, event) -> None:
        actions = node.replica.step(event)
        if node.byzantine is None:
            self.checker.after_step(node, actions, check_log_size=type(event) is Tick)
        crash = node.crash_in_step
        cut = self.rng.randint(0, len(actions)) if crash else len(actions)
        for action in actions[:cut]:
            self._perform(node, action)
        if crash:
            self._crash(node)

    def _perform(self, node: Node, action) -> None:
        honest = node.byzantine is None
        if honest:
            self.checker.before_action(node, action)
        kind = type(action)
        self._trace.update(f"{self.now}/{node.index}/{kind.__name__}".encode())
        if kind is Persist:
            node.wal[action.key] = action.value
        elif kind is Forget:
            prefix = action.below_height.to_bytes(8, "big")
            for key in [key for key in node.wal if key < prefix]:
                del node.wal[key]
        elif kind is Broadcast:
            self._trace.update(action.data)
            self._send(node, [index for index in range(self.config.n) if index != node.index], action.data)
        elif kind is Send:
            self._trace.update(action.data)
            self._send(node, [self.index_of[action.to]], action.data)
        elif kind is BuildProposal:
            self._build(node, action)
        elif kind is CheckBlock:
            valid = node.ledger.check(action.header, action.payload, action.fresh, clock_ms(self.now))
            self._schedule(node, self.app_rng.randint(0, 1), BlockChecked(codec.sha256(action.header), valid))
        elif kind is CommitBlock:
            if honest:
                self.checker.on_committed(node.name, action.height, action.header, action.certificate, node.ledger.head_hash)
            node.ledger.append(action.header, action.payload, action.certificate)
            self._trace.update(action.header)
            if action.payload != EMPTY_PAYLOAD:
                node.last_tx_tick = self.now
            self._update_work(node, force=True)
        elif kind is FetchBlocks:
            self._schedule(node, self.app_rng.randint(1, 3), _FetchJob(action.from_height, action.peers))
        elif kind is Alarm:
            node.alarms.append(action.reason)
            if honest:
                raise InvariantViolation(f"{node.name} raised Alarm: {action.reason}")
        else:
            raise InvariantViolation(f"unknown action {action!r}")

    def _send(self, node: Node, targets: list[int], data: bytes) -> None:
        node.sent_messages += len(targets)
        if node.byzantine is not None:
            pairs = node.byzantine.outgoing(targets, data, node.ledger, clock_ms(self.now))
        else:
            pairs = [(target, data) for target in targets]
        for target, message in pairs:
            self.network.send(self.now, node.index, target, message)

    def _build(self, node: Node, action: BuildProposal) -> None:
        ledger = node.ledger
        if node.byzantine is None and (action.height != ledger.height + 1 or action.prev_hash != ledger.head_hash):
            raise InvariantViolation(f"{node.name}: BuildProposal for {action.height} on a different head")
        payload = PAYLOAD_PREFIX + self.app_rng.randbytes(self.app_rng.randint(4, 24))
        if node.byzantine is not None:
            payload = node.byzantine.payload_for_proposal(payload)
        header = ledger.build(action.view, node.key.public_key, clock_ms(self.now), payload)
        self._schedule(node, self.app_rng.randint(0, 1), ProposalBuilt(action.height, action.view, header, payload))

    def _fetch(self, node: Node, job: _FetchJob) -> None:
        """The driver's catch-up: take verified blocks from the best reachable peer, then Synced."""
        ledger = node.ledger
        best = None
        for key in job.peers:
            peer = self.nodes[self.index_of[key]]
            if peer.alive and not self.network.separated(peer.index, node.index):
                if best is None or peer.ledger.height > best.ledger.height:
                    best = peer
        if best is not None:
            for block in best.ledger.blocks[ledger.height:]:
                if not self.checker.certificate_ok(block.height, block.block_hash, block.certificate):
                    break
                if codec.decode(block.header)["prev"] != ledger.head_hash:
                    break
                if node.byzantine is None:
                    self.checker.on_committed(node.name, block.height, block.header, block.certificate, ledger.head_hash)
                ledger.append(block.header, block.payload, block.certificate)
                if block.payload != EMPTY_PAYLOAD:
                    node.last_tx_tick = self.now
        head = ledger.blocks[-1] if ledger.blocks else None
        self._step(node, Synced(ledger.height, ledger.head_hash, head.header if head else b"", ledger.head_certificate))
        if node.alive:
            self._update_work(node, force=True)

    # -- scripted control (test_scenarios) ----------------------------------------------

    def run_until(self, predicate, ticks_max: int, what: str = "condition") -> int:
        """Step until predicate(self) holds; return the ticks it took."""
        start = self.now
        while not predicate(self):
            if self.now - start >= ticks_max:
                heights = {node.name: node.ledger.height for node in self.nodes}
                views = {node.name: node.replica.view for node in self.nodes if node.alive}
                raise InvariantViolation(f"{what} not reached in {ticks_max} ticks: heights {heights} views {views}")
            self.step_tick()
        return self.now - start

    def run_ticks(self, ticks: int) -> None:
        for _ in range(ticks):
            self.step_tick()

    def crash(self, index: int) -> None:
        self._crash(self.nodes[index])

    def restart(self, index: int) -> None:
        self._boot(self.nodes[index])

    def set_goal(self, goal: int) -> None:
        """Work (pending txs) exists on every node until its chain reaches `goal`."""
        self.goal = goal
        for node in self.nodes:
            if node.alive:
                self._update_work(node)

    # -- results -----------------------------------------------------------------------

    def result(self) -> SimResult:
        counters: Counter = Counter()
        for node in self.honest:
            if node.replica is not None:
                counters.update(node.replica.counters)
        return SimResult(
            seed=self.config.seed,
            n=self.config.n,
            ticks=self.now,
            heights=min(node.ledger.height for node in self.honest),
            views_max=max(node.view_seen for node in self.honest),
            liveness_ticks=self.liveness_ticks,
            faults=Counter(self.faults),
            replica_counters=counters,
            trace_hash=self._trace.hexdigest(),
        )


def _durable_view(wal: dict[bytes, bytes]) -> int:
    record = wal.get(wal_records.VIEW_KEY)
    return codec.decode(wal_records.unseal(wal_records.VIEW_KEY, record))["view"] if record else 0


def run_seed(seed: int, n: int) -> SimResult:
    return Simulation(random_config(seed, n)).run()
