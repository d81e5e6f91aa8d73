"""The node: the single asyncio driver around the pure consensus replica and the pure ledger.

One owner loop does everything that changes state: it feeds events (peer messages,
ticks, answers to the replica's requests) to `Replica.step`, and performs the actions
that come back in order. Every `Persist` is made durable (one synced LevelDB batch)
before any later action of the same list, so a replica's vote never leaves the node
before it is on disk. Commits are one synced batch per block.

Peer payloads are canonical msgpack arrays `[kind, data]`:
    ["c", bytes]              a consensus message (opaque to the driver)
    ["g", [bytes, ...]]       gossiped signed transactions
    ["f", from_height]        a request for committed blocks from `from_height` on
    ["F", [[header, payload, certificate], ...]]   the answer
    ["t", height]             the sender's committed height (so a lagging node notices)
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import time
from dataclasses import dataclass, field

from consensus import actions as act
from consensus import events as ev
from consensus.replica import Replica, ReplicaConfig
from ledger import block as blockmod
from ledger import codec
from ledger.bodies import check_body
from ledger.crypto import KeyPair
from ledger.mempool import Mempool
from ledger.network import ConfigError, load_config, load_genesis, params_of
from ledger.state import LedgerState
from ledger.store import LevelDBStore, StoreError, Tip
from ledger.tx import SignedTx, TxError, check_chain_and_expiry, parse_signed, signatures_valid
from ledger.validation import BlockDiverges, BlockInvalid, ChainContext, CheckedBlock, build_block, check_block
from p2p.network import PeerInfo, PeerNetwork

log = logging.getLogger("ledger.node")

TICK_MS = 50
GOSSIP_FLUSH_TXS = 2000
FETCH_BLOCKS_MAX = 64
FETCH_BYTES_MAX = 24 * 1024 * 1024
FETCH_TIMEOUT_MS = 3000
TIP_ANNOUNCE_MS = 1000
STALL_BLOCKS = 5
# A primary proposes at most this many txs per block (below genesis max_block_txs): a
# block's validation runs on the event loop, and smaller blocks keep RPC and gossip
# responsive and latency low while still amortising each consensus round.
PROPOSAL_TXS_MAX = 3000
PEER_MESSAGE_MAX = 64 * 1024 * 1024
CHECKED_BLOCKS_MAX = 16
FETCH_SERVE_INTERVAL_MS = 20
# A transaction this node acknowledged that is still pending this long after it arrived
# is gossiped again (every interval, at most the cap per round, oldest first): a gossip
# message can be lost on a link that dies before anyone notices, or refused by a full
# queue or mempool, and then only this node holds the transaction. As a backup it never
# proposes it, and its lone censorship vote cannot force a view change.
REGOSSIP_AGE_MS = 4000
REGOSSIP_INTERVAL_MS = 2000
REGOSSIP_TXS_MAX = 10_000
REGOSSIP_SCAN_MAX = 50_000  # pool entries looked at per round, so a backlog costs bounded work


class NodeUnavailable(Exception):
    """The node cannot take transactions now (halted on a fault, or stopping)."""


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class StartupError(Exception):
    """The node cannot start; the message says why and what to do."""


@dataclass
class CommitRecord:
    """What the RPC needs to know about a committed transaction."""

    height: int
    index: int
    code: str


@dataclass
class _CatchUp:
    next_height: int
    peers: list[bytes]
    peer_index: int = 0
    deadline_ms: int = 0


@dataclass
class NodeStats:
    counters: collections.Counter = field(default_factory=collections.Counter)
    commit_latency_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=100_000))


class Node:
    def __init__(self, home: str, *, clock=wall_clock_ms, tick_ms: int = TICK_MS):
        self.home = home
        self.clock = clock
        self.tick_ms = tick_ms
        try:
            self.config = load_config(home)
            self.genesis = load_genesis(self.config.genesis_path)
            self.key = KeyPair.load(self.config.key_path)
        except (ConfigError, OSError, ValueError, KeyError) as exc:
            raise StartupError(str(exc)) from None
        self.chain_id: str = self.genesis["chain_id"]
        self.genesis_hash = blockmod.genesis_hash(self.genesis)
        self.params = params_of(self.genesis)
        self.validators = tuple(bytes.fromhex(v["public_key"]) for v in self.genesis["validators"])
        self.validator_names = {bytes.fromhex(v["public_key"]): v["name"] for v in self.genesis["validators"]}
        if self.key.public_key not in self.validators:
            raise StartupError(f"{self.config.key_path} is not the key of a genesis validator")
        try:
            self.store = LevelDBStore(self.config.data_dir)
        except StoreError as exc:
            raise StartupError(str(exc)) from None
        try:
            self.tip, self.state = self._open_chain()
            self.replica = Replica(
                ReplicaConfig(chain_id=self.chain_id, validators=self.validators),
                self.key, self.tip.height, self.tip.hash, self.store.wal_items(),
                committed_certificate=self.store.certificate(self.tip.height) if self.tip.height else None,
            )
        except (StartupError, StoreError, ValueError) as exc:
            self.store.close()
            raise StartupError(str(exc)) from None
        self.mempool = Mempool()
        self.stats = NodeStats()
        # Client submissions admitted since the last flush, synced to the store before the
        # client hears "pending"; `_acknowledged` holds the ids that have a pending record.
        self._acknowledging: list[SignedTx] = []
        self._synced_future: asyncio.Future | None = None
        self._acknowledged: set[bytes] = set()
        self._arrival_ms: dict[bytes, int] = {}  # tx id -> this node's clock when it was admitted
        try:
            self._restore_acknowledged()
        except StoreError as exc:
            self.store.close()
            raise StartupError(str(exc)) from None
        self._checked: dict[bytes, CheckedBlock] = {}
        self._events: collections.deque = collections.deque()
        self._draining = False
        self._gossip_out: list[bytes] = []
        self._link_generations: dict[bytes, int] = {}
        self._next_regossip_ms = 0
        self._flush_scheduled = False
        self._stall_reference_height = self.tip.height
        self._last_view = self.replica.view
        self._last_block_full = False
        self._work_reported: tuple[bool, bool] | None = None
        self._catchup: _CatchUp | None = None
        self._peer_tips: dict[bytes, int] = {}
        self._last_served_ms: dict[bytes, int] = {}
        self._last_tip_announce_ms = 0
        self._waiters: dict[bytes, list[asyncio.Future]] = {}
        self.event_subscribers: set[asyncio.Queue] = set()
        self._tick_task: asyncio.Task | None = None
        self._stopping = False
        self.fatal_error: str | None = None
        peers = [PeerInfo(name=p.name, public_key=p.public_key, host=p.host, port=p.port) for p in self.config.peers]
        self.p2p = PeerNetwork(
            chain_id=self.chain_id, genesis_hash=self.genesis_hash, key=self.key, name=self.config.name,
            listen_host=self.config.p2p_host, listen_port=self.config.p2p_port, peers=peers,
            on_message=self._on_peer_message, max_message_bytes=PEER_MESSAGE_MAX,
        )

    # ------------------------------------------------------------------ startup
    def _open_chain(self) -> tuple[Tip, LedgerState]:
        """Open (or initialise) the chain and check that the store is the one this genesis made."""
        stored_genesis = self.store.genesis_hash()
        if stored_genesis is None:
            if self.store.tip() is not None or self.store.header(1) is not None:
                raise StartupError(self._recover_hint("the store has blocks but no genesis record"))
            state = LedgerState.from_genesis(self.genesis)
            self.store.init_genesis(self.genesis_hash, state.state_root, dict(state.items()))
            return self.store.tip(), state
        if stored_genesis != self.genesis_hash:
            raise StartupError(f"the store in {self.config.data_dir} belongs to another genesis; "
                               "point data_dir at an empty directory or use the matching genesis.json")
        tip = self.store.tip()
        if tip is None:
            raise StartupError(self._recover_hint("the store has no tip record"))
        self._check_header_chain(tip)
        state = LedgerState.from_records(self.store.state_items(), tip.state_root)
        return tip, state

    def _restore_acknowledged(self) -> None:
        """Re-admit what this node acknowledged to clients before it stopped and has not
        seen committed; drop the records that are settled (committed, expired) or unusable."""
        now = self.clock()
        settled = []
        for tx_id, raw in self.store.pending_items():
            try:
                stx = parse_signed(raw)
                if stx.tx_id != tx_id:
                    raise TxError("bad_record", "the envelope's tx id is not the record's key")
                self._check_admissible(stx, now)
                self.mempool.add(stx, self.tip.height)
                self._arrival_ms[stx.tx_id] = now
            except TxError as exc:
                if exc.code not in ("duplicate", "expired"):
                    log.warning("pending record %s dropped: %s", tx_id.hex(), exc)
                    self.stats.counters["pending_records_dropped"] += 1
                settled.append(tx_id)
                continue
            self._acknowledged.add(tx_id)
        if settled:
            self.store.pending_delete(settled)
        self.stats.counters["pending_restored"] = len(self._acknowledged)

    def _check_header_chain(self, tip: Tip) -> None:
        """Hash links from genesis to the tip, and the tip's certificate (cheap: headers only)."""
        prev_hash, prev_time, expected = self.genesis_hash, self.genesis["genesis_time"], 1
        last_header = None
        for height, header_bytes in self.store.headers():
            if height != expected:
                raise StartupError(self._recover_hint(f"block {expected} is missing from the store"))
            try:
                header = blockmod.decode_header(header_bytes)
            except ValueError as exc:
                raise StartupError(self._recover_hint(f"the header at height {height} is unreadable: {exc}")) from None
            if header.height != height or header.prev != prev_hash or header.time <= prev_time:
                raise StartupError(self._recover_hint(f"the header at height {height} does not link to height {height - 1}"))
            prev_hash, prev_time, expected, last_header = blockmod.block_hash(header_bytes), header.time, height + 1, header
        if expected - 1 != tip.height or prev_hash != tip.hash:
            raise StartupError(self._recover_hint(f"the tip record (height {tip.height}) does not match the stored headers"))
        if last_header is not None:
            if last_header.state_root != tip.state_root:
                raise StartupError(self._recover_hint("the tip's state root differs from its header"))
            problem = blockmod.certificate_error(self.store.certificate(tip.height), self.chain_id, list(self.validators),
                                                 tip.height, tip.hash)
            if problem:
                raise StartupError(self._recover_hint(f"the certificate at height {tip.height} is invalid: {problem}"))

    def _recover_hint(self, problem: str) -> str:
        return (f"the chain in {self.config.data_dir} is inconsistent: {problem}. Run `ledger audit --home {self.home}` "
                f"for details; to recover, move the data directory aside and restart the node: it re-syncs every "
                f"block, with its certificate, from its peers.")

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.p2p.start()
        self._tick_task = asyncio.get_running_loop().create_task(self._tick_loop())

    async def stop(self) -> None:
        self._stopping = True
        if self._tick_task is not None:
            self._tick_task.cancel()
            await asyncio.gather(self._tick_task, return_exceptions=True)  # let the cancellation finish
        await self.p2p.stop()
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.cancel()
        self.store.close()

    async def _tick_loop(self) -> None:
        interval = self.tick_ms / 1000
        while not self._stopping:
            try:
                self.on_tick()
            except Exception:
                # A fault in the driver must be loud; a node that silently stops ticking is stuck.
                log.exception("tick failed")
                self.stats.counters["tick_errors"] += 1
            await asyncio.sleep(interval)

    # ------------------------------------------------------------------ the event pump
    def feed(self, event) -> None:
        """Queue an event for the replica; process the queue unless already inside it."""
        self._events.append(event)
        if self._draining:
            return
        self._draining = True
        try:
            while self._events:
                self._perform(self.replica.step(self._events.popleft()))
        finally:
            self._draining = False

    def _perform(self, actions) -> None:
        persist: list[tuple[bytes, bytes]] = []
        for action in actions:
            if isinstance(action, act.Persist):
                persist.append((action.key, action.value))
                continue
            if persist:
                self.store.wal_write(persist)  # durable before anything after it leaves the node
                persist = []
            self._perform_one(action)
        if persist:
            self.store.wal_write(persist)

    def _perform_one(self, action) -> None:
        kind = type(action)
        if kind is act.Broadcast:
            self.p2p.broadcast(codec.encode(["c", action.data]))
        elif kind is act.Send:
            self.p2p.send(action.to, codec.encode(["c", action.data]))
        elif kind is act.BuildProposal:
            self._build_proposal(action)
        elif kind is act.CheckBlock:
            self._check_proposal(action)
        elif kind is act.CommitBlock:
            self._commit_certified(action)
        elif kind is act.FetchBlocks:
            self._start_catchup(action.from_height, list(action.peers))
        elif kind is act.Forget:
            self._forget_wal(action.below_height)
        elif kind is act.Alarm:
            log.error("ALARM from consensus: %s", action.reason)
            self.stats.counters["alarms"] += 1
        else:
            raise TypeError(f"unknown consensus action {action!r}")

    def _forget_wal(self, below_height: int) -> None:
        # Replica WAL keys start with their 8-byte big-endian height (consensus/wal.py).
        self.store.wal_delete_below(below_height.to_bytes(8, "big"))

    # ------------------------------------------------------------------ blocks
    def chain_context(self) -> ChainContext:
        return ChainContext(
            chain_id=self.chain_id, validators=self.validators,
            max_block_txs=self.params["max_block_txs"], max_block_bytes=self.params["max_block_bytes"],
            max_clock_drift_ms=self.params["max_clock_drift_ms"],
            tip_height=self.tip.height, tip_hash=self.tip.hash, tip_time=self.tip.time or self.genesis["genesis_time"],
        )

    def _build_proposal(self, action) -> None:
        if action.height != self.tip.height + 1 or action.prev_hash != self.tip.hash:
            log.info("ignoring a proposal request for height %d (tip %d)", action.height, self.tip.height)
            return
        ctx = self.chain_context()
        block_time = max(self.clock(), ctx.tip_time + 1)
        txs = self.mempool.select(block_time, min(ctx.max_block_txs, PROPOSAL_TXS_MAX), ctx.max_block_bytes)
        checked = build_block(ctx, self.state, txs, time_ms=block_time, view=action.view, proposer=self.key.public_key)
        self._remember_checked(checked)
        self.stats.counters["blocks_proposed"] += 1
        self.feed(ev.ProposalBuilt(action.height, action.view, checked.header_bytes,
                                   blockmod.encode_payload([t.raw for t in txs])))

    def _validate(self, header: bytes, payload: bytes, fresh: bool) -> CheckedBlock:
        digest = blockmod.block_hash(header)
        cached = self._checked.get(digest)
        if cached is not None:
            return cached
        checked = check_block(self.chain_context(), self.state, header, payload,
                              is_committed=lambda tx_id: self.store.tx_location(tx_id) is not None,
                              verified=self.mempool.verified, now_ms=self.clock() if fresh else None)
        self._remember_checked(checked)
        return checked

    def _remember_checked(self, checked: CheckedBlock) -> None:
        """Cache a validated block until commit; bounded, since proposals for one height can
        arrive in many views (a Byzantine primary per view), each up to 8 MiB of txs."""
        if len(self._checked) >= CHECKED_BLOCKS_MAX:
            del self._checked[next(iter(self._checked))]  # the oldest
        self._checked[checked.block_hash] = checked

    def _check_proposal(self, action) -> None:
        digest = blockmod.block_hash(action.header)
        try:
            self._validate(action.header, action.payload, action.fresh)
            valid = True
        except BlockInvalid as exc:
            log.warning("rejecting block %s: %s", digest.hex()[:16], exc)
            self.stats.counters["blocks_rejected"] += 1
            valid = False
        self.feed(ev.BlockChecked(digest, valid))

    def _commit_certified(self, action) -> None:
        if action.height <= self.tip.height:
            return  # already committed through catch-up
        try:
            checked = self._validate(action.header, action.payload, False)
        except BlockInvalid as exc:
            # A quorum certified a block this node cannot reproduce: a bug or non-determinism.
            self._halt(f"certified block at height {action.height} fails validation here: {exc}")
            return
        self._commit(checked, action.certificate)

    def _halt(self, reason: str) -> None:
        log.critical("halting: %s", reason)
        self.fatal_error = reason
        self.stats.counters["alarms"] += 1
        self._stopping = True

    def _commit(self, checked: CheckedBlock, certificate: dict) -> None:
        header, outcome = checked.header, checked.outcome
        tx_ids = [t.tx_id for t in checked.txs]
        acknowledged = self._acknowledged
        settled = [tx_id for tx_id in tx_ids if tx_id in acknowledged] if acknowledged else []
        self.store.commit_block(
            height=header.height, header=checked.header_bytes, block_hash=checked.block_hash, time=header.time,
            state_root=header.state_root, txs=[t.raw for t in checked.txs], tx_ids=tx_ids, results=outcome.results,
            certificate=certificate, changes=outcome.changes, settled_pending=settled,
        )
        acknowledged.difference_update(settled)
        self.state.apply(outcome.changes, outcome.state_root)
        self.tip = Tip(height=header.height, hash=checked.block_hash, state_root=header.state_root, time=header.time)
        self._checked.clear()
        self.mempool.remove_committed(tx_ids)
        # A block at the proposal cap left txs behind for lack of room, not censorship.
        self._last_block_full = len(tx_ids) >= min(self.params["max_block_txs"], PROPOSAL_TXS_MAX)
        now = self.clock()
        for index, (tx_id, code) in enumerate(zip(tx_ids, outcome.results)):
            arrived = self._arrival_ms.pop(tx_id, None)
            if arrived is not None:
                self.stats.commit_latency_ms.append(now - arrived)
            futures = self._waiters.pop(tx_id, None)
            if futures:
                for future in futures:
                    if not future.done():
                        future.set_result(CommitRecord(header.height, index, code))
        self.stats.counters["blocks_committed"] += 1
        self.stats.counters["txs_committed"] += len(tx_ids)
        self._publish_block(checked, tx_ids, outcome.results)
        if self._catchup is None:
            # The replica forgets the work state when its height moves (consensus/events.py).
            self._report_work(now, force=True)

    def _publish_block(self, checked: CheckedBlock, tx_ids, results) -> None:
        if not self.event_subscribers:
            return
        # Encoded once for every subscriber (a block's event can hold thousands of txs).
        message = json.dumps({"height": checked.header.height, "hash": checked.block_hash.hex(),
                              "txs": [{"tx_id": i.hex(), "code": c} for i, c in zip(tx_ids, results)]})
        for queue in list(self.event_subscribers):
            if queue.full():
                # A subscriber that cannot keep up is cut off rather than allowed to grow memory.
                self.event_subscribers.discard(queue)
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)  # tells its WebSocket handler to close
                self.stats.counters["event_subscribers_dropped"] += 1
            else:
                queue.put_nowait(message)

    # ------------------------------------------------------------------ catch-up
    def _start_catchup(self, from_height: int, peers: list[bytes]) -> None:
        peers = [p for p in peers if p in self.validator_names and p != self.key.public_key]
        if not peers:
            peers = self.p2p.connected()
        if self._catchup is not None:
            self._catchup.peers = peers
            return
        self._catchup = _CatchUp(next_height=max(from_height, self.tip.height + 1), peers=peers)
        if not peers:
            self._finish_catchup()  # nobody to ask now: the replica retries later
            return
        self._request_blocks()

    def _request_blocks(self) -> None:
        sync = self._catchup
        peer = sync.peers[sync.peer_index % len(sync.peers)]
        sync.deadline_ms = self.clock() + FETCH_TIMEOUT_MS
        self.p2p.send(peer, codec.encode(["f", self.tip.height + 1]))

    def _serve_blocks(self, peer: bytes, from_height) -> None:
        if type(from_height) is not int or from_height < 1:
            self.stats.counters["peer_garbage"] += 1
            return
        now = self.clock()
        if now - self._last_served_ms.get(peer, -FETCH_SERVE_INTERVAL_MS) < FETCH_SERVE_INTERVAL_MS:
            # A peer asking faster than it could apply what it gets is wasting our disk and
            # CPU: answer at most one fetch per interval per peer (it retries on timeout).
            self.stats.counters["fetch_rate_limited"] += 1
            return
        self._last_served_ms[peer] = now
        items, total = [], 0
        for height in range(from_height, min(self.tip.height, from_height + FETCH_BLOCKS_MAX - 1) + 1):
            stored = self.store.block(height)
            cert = self.store.certificate(height)
            if stored is None or cert is None:
                break
            payload = blockmod.encode_payload(stored.txs)
            total += len(payload) + len(stored.header)
            if items and total > FETCH_BYTES_MAX:
                break
            items.append([stored.header, payload, cert])
        self.p2p.send(peer, codec.encode(["F", items]))

    def _apply_fetched(self, peer: bytes, items) -> None:
        sync = self._catchup
        if sync is None:
            self.stats.counters["fetch_unsolicited"] += 1
            return
        if type(items) is not list:
            self.stats.counters["peer_garbage"] += 1
            return
        applied = 0
        for item in items:
            if type(item) is not list or len(item) != 3 or type(item[0]) is not bytes or type(item[1]) is not bytes:
                self.stats.counters["peer_garbage"] += 1
                break
            header_bytes, payload, cert = item
            digest = blockmod.block_hash(header_bytes)
            try:
                height = blockmod.decode_header(header_bytes).height
            except ValueError:
                self.stats.counters["fetch_invalid"] += 1
                break
            if height <= self.tip.height:
                continue
            # Trust the certificate, not the peer: q genesis validators signed this exact header.
            problem = blockmod.certificate_error(cert, self.chain_id, list(self.validators), height, digest)
            if problem is None:
                try:
                    checked = self._validate(header_bytes, payload, False)
                except BlockDiverges as exc:
                    # The very bytes q validators certified fail here: not the peer's doing.
                    self._halt(f"certified block at height {height} fails validation here: {exc}")
                    return
                except BlockInvalid as exc:
                    problem = str(exc)
            if problem is not None:
                log.warning("fetched block %d from %s rejected: %s", height, self._peer_name(peer), problem)
                self.stats.counters["fetch_invalid"] += 1
                break
            self._commit(checked, cert)
            applied += 1
            self.stats.counters["blocks_fetched"] += 1
        if applied:
            self._request_blocks()  # keep going until a peer has nothing more
            return
        self._finish_catchup()

    def _finish_catchup(self) -> None:
        """Every fetch ends with Synced, also one that made no progress (the replica retries)."""
        if self._catchup is None:
            return
        self._catchup = None
        header = self.store.header(self.tip.height) if self.tip.height else b""
        certificate = self.store.certificate(self.tip.height) if self.tip.height else None
        self.feed(ev.Synced(self.tip.height, self.tip.hash, header, certificate))
        self._report_work(self.clock(), force=True)

    def _peer_name(self, key: bytes) -> str:
        return self.validator_names.get(key, key.hex()[:16])

    # ------------------------------------------------------------------ peers
    def _on_peer_message(self, sender: bytes, payload: bytes) -> None:
        try:
            message = codec.decode(payload)
            kind, data = message
            if type(kind) is not str:
                raise ValueError("kind must be a str")
        except (codec.CodecError, ValueError, TypeError):
            self.stats.counters["peer_garbage"] += 1
            return
        try:
            if kind == "c" and type(data) is bytes:
                self.feed(ev.Receive(sender, data))
            elif kind == "g" and type(data) is list:
                self._admit_gossip(data)
            elif kind == "f":
                self._serve_blocks(sender, data)
            elif kind == "F":
                self._apply_fetched(sender, data)
            elif kind == "t" and type(data) is int:
                self._peer_tips[sender] = data
            else:
                self.stats.counters["peer_garbage"] += 1
        except StoreError as exc:
            self._halt(f"store failure: {exc}")

    def _admit_gossip(self, raws: list) -> None:
        now = self.clock()
        for raw in raws[:GOSSIP_FLUSH_TXS * 4]:
            if type(raw) is not bytes:
                self.stats.counters["gossip_invalid"] += 1
                continue
            if self.mempool.verified(raw) is not None:
                continue  # these exact bytes are pooled already: no parse, no signature check
            try:
                stx = parse_signed(raw)
            except TxError:
                self.stats.counters["gossip_invalid"] += 1
                continue
            if stx.tx_id in self.mempool or self.store.tx_location(stx.tx_id) is not None:
                continue  # known already: no second signature check
            try:
                check_chain_and_expiry(stx, self.chain_id, now)
            except TxError:
                self.stats.counters["gossip_expired"] += 1
                continue
            if not signatures_valid(stx):
                self.stats.counters["gossip_invalid"] += 1
                continue
            try:
                self.mempool.add(stx, self.tip.height)
            except TxError:
                self.stats.counters["gossip_dropped_full"] += 1
                continue
            self._arrival_ms.setdefault(stx.tx_id, now)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        """Sync, gossip and report work once the current burst of admissions is done:
        everything admitted in one loop iteration (batch requests, a gossip message) is
        synced in one write and leaves in one message, and a primary hears of new work
        without waiting for the next tick."""
        if self._flush_scheduled or self._stopping:
            return
        self._flush_scheduled = True
        asyncio.get_running_loop().call_soon(self._flush_admissions)

    def _flush_admissions(self) -> None:
        self._flush_scheduled = False
        if self._stopping or self.fatal_error:
            self._fail_acknowledging()
            return
        self._sync_acknowledging()
        self._flush_gossip()
        self._report_work(self.clock())

    def _sync_acknowledging(self) -> None:
        """One synced write for every client submission admitted since the last flush."""
        admitted, self._acknowledging = self._acknowledging, []
        future, self._synced_future = self._synced_future, None
        # One committed (or expired) within this loop iteration needs no record.
        envelopes = [(stx.tx_id, stx.raw) for stx in admitted if stx.tx_id in self.mempool]
        if envelopes:
            try:
                self.store.pending_write(envelopes)
            except StoreError as exc:
                self._halt(f"store failure: {exc}")
                if future is not None and not future.done():
                    future.set_exception(NodeUnavailable(f"the node cannot store transactions: {exc}"))
                return
            self._acknowledged.update(tx_id for tx_id, _ in envelopes)
        if future is not None and not future.done():
            future.set_result(None)

    def _fail_acknowledging(self) -> None:
        self._acknowledging = []
        future, self._synced_future = self._synced_future, None
        if future is not None and not future.done():
            future.set_exception(NodeUnavailable(self.fatal_error or "the node is stopping"))

    def _flush_gossip(self) -> None:
        while self._gossip_out:
            batch, self._gossip_out = self._gossip_out[:GOSSIP_FLUSH_TXS], self._gossip_out[GOSSIP_FLUSH_TXS:]
            self.p2p.broadcast(codec.encode(["g", batch]))

    def _gossip_to_new_links(self) -> None:
        """A peer whose link just came up (or came back, however briefly it was down)
        missed what was gossiped while it was away: send it every pending transaction once,
        in batches. Links are told apart by generation, not by peer, because a link that
        drops and is redialed within one tick shows the same peer in both readings."""
        generations = self.p2p.link_generations()
        fresh = [peer for peer, generation in generations.items() if self._link_generations.get(peer) != generation]
        self._link_generations = generations
        if not fresh or not len(self.mempool):
            return
        raws = self.mempool.raw_envelopes()
        for peer in sorted(fresh):
            for start in range(0, len(raws), GOSSIP_FLUSH_TXS):
                self.p2p.send(peer, codec.encode(["g", raws[start:start + GOSSIP_FLUSH_TXS]]))
            self.stats.counters["regossiped"] += len(raws)

    def _regossip_stale(self, now: int) -> None:
        """Gossip again what this node acknowledged and still holds uncommitted after
        REGOSSIP_AGE_MS (see there), so that no loss of a gossip message strands it here."""
        if now < self._next_regossip_ms or not self._acknowledged:
            return
        self._next_regossip_ms = now + REGOSSIP_INTERVAL_MS
        stale = []
        for stx in itertools.islice(self.mempool.oldest_first(), REGOSSIP_SCAN_MAX):
            arrived = self._arrival_ms.get(stx.tx_id)
            if arrived is not None and now - arrived < REGOSSIP_AGE_MS:
                break  # arrival order: everything after this is younger still
            if stx.tx_id in self._acknowledged:
                stale.append(stx.raw)
                if len(stale) >= REGOSSIP_TXS_MAX:
                    break
        for start in range(0, len(stale), GOSSIP_FLUSH_TXS):
            self.p2p.broadcast(codec.encode(["g", stale[start:start + GOSSIP_FLUSH_TXS]]))
        self.stats.counters["regossiped_stale"] += len(stale)

    # ------------------------------------------------------------------ submissions (RPC)
    def submit(self, raw: bytes) -> SignedTx:
        """Every submission check in the contract's order; raises TxError. Admits and gossips."""
        return self.admit(parse_signed(raw))

    def admit(self, stx: SignedTx) -> SignedTx:
        """The checks after parsing, then admission; the caller acknowledges the tx to its
        client only once `synced()` resolves."""
        now = self.clock()
        self._check_admissible(stx, now)
        self.mempool.add(stx, self.tip.height)
        self._arrival_ms[stx.tx_id] = now
        self._acknowledging.append(stx)
        self._gossip_out.append(stx.raw)
        if len(self._gossip_out) >= GOSSIP_FLUSH_TXS:
            self._flush_gossip()
        self._schedule_flush()
        self.stats.counters["txs_submitted"] += 1
        return stx

    def synced(self) -> asyncio.Future:
        """Resolves once every transaction admitted so far is synced to the store, so that
        a crash after the client hears "pending" loses none of them; fails with
        NodeUnavailable when the node halted or is stopping. Await it shielded: it is shared."""
        loop = asyncio.get_running_loop()
        if self._stopping or self.fatal_error:
            future = loop.create_future()
            future.set_exception(NodeUnavailable(self.fatal_error or "the node is stopping"))
            return future
        if not self._acknowledging:
            future = loop.create_future()
            future.set_result(None)
            return future
        if self._synced_future is None:
            self._synced_future = loop.create_future()  # the flush that admit() scheduled resolves it
        return self._synced_future

    def _check_admissible(self, stx: SignedTx, now: int) -> None:
        """Chain, expiry, signatures, body and duplicate checks, in the contract's order."""
        check_chain_and_expiry(stx, self.chain_id, now)
        pooled = self.mempool.get(stx.tx_id)
        # Byte-identical to a pooled envelope: its signatures and body were checked already.
        if pooled is None or pooled.raw != stx.raw:
            if not signatures_valid(stx):
                raise TxError("bad_signature", "a signature does not verify for its signer")
            problem = check_body(stx.type, stx.body)
            if problem is not None:
                raise TxError("invalid_body", problem)
        if pooled is not None or self.store.tx_location(stx.tx_id) is not None:
            raise TxError("duplicate", "transaction is already pending or committed")

    def wait_for_commit(self, tx_id: bytes) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(tx_id, []).append(future)
        return future

    def stop_waiting(self, tx_id: bytes, future: asyncio.Future) -> None:
        futures = self._waiters.get(tx_id)
        if futures and future in futures:
            futures.remove(future)
            if not futures:
                del self._waiters[tx_id]

    def commit_record(self, tx_id: bytes) -> CommitRecord | None:
        location = self.store.tx_location(tx_id)
        if location is None:
            return None
        height, index = location
        stored = self.store.block(height)
        return CommitRecord(height, index, stored.results[index])

    # ------------------------------------------------------------------ the tick
    def on_tick(self) -> None:
        if self.fatal_error:
            return
        now = self.clock()
        expired = self.mempool.expire(now)
        for tx_id in expired:
            self._arrival_ms.pop(tx_id, None)
            for future in self._waiters.pop(tx_id, ()):
                future.cancel()  # it expired uncommitted: nobody waits for it any more
        settled = [tx_id for tx_id in expired if tx_id in self._acknowledged]
        if settled:
            self._acknowledged.difference_update(settled)
            try:
                self.store.pending_delete(settled)
            except StoreError as exc:
                self._halt(f"store failure: {exc}")
                return
        self._flush_gossip()
        self._gossip_to_new_links()
        self._regossip_stale(now)
        if self.replica.view != self._last_view:
            self._last_view = self.replica.view
            self._stall_reference_height = self.tip.height
        self._report_work(now)
        self.feed(ev.Tick())
        self._tick_catchup(now)

    def _report_work(self, now: int, force: bool = False) -> None:
        """Tell the replica whether there is work (pending txs or a due expiry) and whether
        a transaction has been left behind by blocks that had room for it (censorship)."""
        next_expiry = self.state.next_expiry()
        has_work = len(self.mempool) > 0 or (next_expiry is not None and next_expiry <= now)
        oldest = self.mempool.oldest_arrival_height()
        stalled = (oldest is not None and not self._last_block_full
                   and self.tip.height - max(oldest, self._stall_reference_height) >= STALL_BLOCKS)
        if force or (has_work, stalled) != self._work_reported:
            self._work_reported = (has_work, stalled)
            self.feed(ev.WorkChanged(has_work, stalled))

    def _tick_catchup(self, now: int) -> None:
        if now - self._last_tip_announce_ms >= TIP_ANNOUNCE_MS:
            self._last_tip_announce_ms = now
            self.p2p.broadcast(codec.encode(["t", self.tip.height]))
            ahead = [peer for peer, height in self._peer_tips.items() if height > self.tip.height + 1]
            if ahead and self._catchup is None:
                # Two or more blocks behind a peer: this node missed commits (restart, partition).
                self._start_catchup(self.tip.height + 1, ahead)
        sync = self._catchup
        if sync is not None and now > sync.deadline_ms:
            self.stats.counters["fetch_timeouts"] += 1
            sync.peer_index += 1
            if sync.peer_index >= 3 * len(sync.peers):
                self._finish_catchup()
            else:
                self._request_blocks()

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        return {
            "chain_id": self.chain_id,
            "node": self.config.name,
            "validator": self.key.public_key.hex(),
            "height": self.tip.height,
            "last_block_hash": self.tip.hash.hex(),
            "view": self.replica.view,
            "primary": self.replica.primary.hex(),
            "peers": [{"name": peer["name"], "connected": peer["connected"]} for peer in self.p2p.status()],
            "mempool_size": len(self.mempool),
            "syncing": bool(self._catchup is not None or self.replica.syncing),
        }
