"""A PBFT replica for one block per height, as a pure deterministic state machine.

`Replica.step(event) -> list[Action]` is the only entry point. Events are logical timer
ticks, authenticated peer messages and the driver's answers to the replica's requests;
actions are WAL writes, messages, requests to the driver and commits. Nothing here reads
a clock, a random source, the disk or the network, so a seeded simulator can drive the
production code exactly as the node does.

The protocol (docs/consensus.md has the full description):

* Normal case, height h+1 in view v: primary(v) = validators[v % n] pre-prepares a fresh
  block; a backup that validated it (CheckBlock) persists and broadcasts PREPARE. The
  block is *prepared* when q validators stand behind (view, height, digest): the primary's
  PRE-PREPARE plus q-1 PREPAREs from distinct backups (a PREPARE from the primary is never
  counted). A prepared replica persists and broadcasts COMMIT, the contract's commit vote;
  q matching COMMITs are the block's certificate and it is committed (CommitBlock).
* View change: a progress timer runs only while there is work (or a proposal in flight);
  on expiry, on a stalled mempool, or when f+1 others want a higher view, the replica
  sends VIEW-CHANGE(target) with its committed height, that height's certificate and its
  highest-view prepared certificate for the next height. primary(target) sends NEW-VIEW
  with q VIEW-CHANGEs and re-pre-prepares the block of the highest-view prepared
  certificate at h*+1 byte for byte (or proposes fresh if there is none). Backups
  recompute that choice and move to the next view on a mismatch.
* Persistence: each own vote is Persisted before it is broadcast, and a restarted
  replica resends those records verbatim, so it never signs two digests for one
  (kind, view, height) and never lowers its view.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

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
from consensus.messages import (
    KIND_COMMIT,
    KIND_PREPARE,
    KIND_PREPREPARE,
    PREPREPARE_TAG,
    TAGS,
    Certificate,
    CertificateMessage,
    Commit,
    Limits,
    MessageError,
    NewView,
    Prepare,
    PreparedCertificate,
    PrePrepare,
    ViewChange,
    decode_message,
    decode_preprepare_parts,
    encode_certificate_message,
    encode_new_view,
    encode_preprepare,
    encode_view_change,
    encode_vote,
    envelope_parts,
    parse_certificate,
    parse_header,
    parse_prepared,
    sign_commit,
    sign_new_view,
    sign_prepare,
    sign_preprepare,
    sign_view_change,
    Signed,
)
from consensus.quorum import (
    NewViewPlan,
    Quorum,
    SignatureChecker,
    VerifyFunction,
    certificate_is_valid,
    new_view_signature_is_valid,
    plan_new_view,
    view_change_is_valid,
)

NORMAL = "normal"
VIEW_CHANGE = "view_change"

_UNCHECKED = "unchecked"
_CHECKING = "checking"
_VALID = "valid"
_INVALID = "invalid"


@dataclass(frozen=True)
class ReplicaConfig:
    """Static parameters; all durations are in ticks (the driver ticks every ~50 ms)."""

    chain_id: str
    validators: tuple[bytes, ...]  # public keys in genesis order
    progress_timeout_ticks: int = 40  # base; doubles with each consecutive failed view
    stall_ticks: int = 40  # WorkChanged(stalled=True) must last this long (x2^failed views)
    timeout_doublings_max: int = 6  # timeouts stop growing at base * 2^6
    retransmit_ticks: int = 20  # resend own votes / VIEW-CHANGE while stuck this long
    catchup_grace_ticks: int = 10  # evidence of being behind must last this long before FetchBlocks
    sync_timeout_ticks: int = 600  # give up waiting for Synced after this long
    height_window: int = 4  # W: buffer messages at most W heights ahead
    view_window: int = 8  # Vmax: buffer messages and accept VIEW-CHANGEs at most Vmax views ahead
    payload_bytes_max: int = 9 * 2**20  # a block's txs (8 MiB) plus msgpack framing
    header_bytes_max: int = 4096
    buffer_bytes_max: int = 64 * 2**20  # payloads of buffered future PRE-PREPAREs
    signature_cache_size: int = 4096

    def __post_init__(self):
        if type(self.chain_id) is not str or not self.chain_id:
            raise ValueError("chain_id must be a non-empty str")
        Quorum(tuple(self.validators))  # raises ValueError for an invalid set
        for name in (
            "progress_timeout_ticks", "stall_ticks", "retransmit_ticks", "catchup_grace_ticks",
            "sync_timeout_ticks", "height_window", "view_window", "payload_bytes_max", "header_bytes_max",
            "signature_cache_size",
        ):
            if type(getattr(self, name)) is not int or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int")
        if self.height_window < 2:
            raise ValueError("height_window must be at least 2 (the next height and the one after)")
        if type(self.timeout_doublings_max) is not int or not 0 <= self.timeout_doublings_max <= 20:
            raise ValueError("timeout_doublings_max must be in 0..20")


class _Block:
    """A candidate block for the next height and what this replica's driver said of it."""

    __slots__ = ("block_hash", "payload_hash", "header", "payload", "status", "rejected_fresh")

    def __init__(self, block_hash: bytes, payload_hash: bytes, header: bytes, payload: bytes | None):
        self.block_hash = block_hash
        self.payload_hash = payload_hash
        self.header = header
        self.payload = payload
        self.status = _UNCHECKED
        # A block refused by a fresh check (its time against our clock) may still be
        # valid when carried over, where the clock is not consulted.
        self.rejected_fresh = False

    @property
    def key(self) -> tuple[bytes, bytes]:
        return (self.block_hash, self.payload_hash)


class _Height:
    """Everything about the next height h+1; replaced wholesale when the height moves."""

    def __init__(self, height: int):
        self.height = height
        self.blocks: dict[tuple[bytes, bytes], _Block] = {}
        self.checking: dict[bytes, tuple[tuple[bytes, bytes], bool]] = {}  # block_hash -> (block key, fresh)
        self.check_queue: list[tuple[tuple[bytes, bytes], bool]] = []
        self.preprepares: dict[int, PrePrepare] = {}  # the one accepted per view
        self.prepares: dict[int, dict[bytes, Prepare]] = {}
        self.prepare_counts: dict[tuple[int, bytes, bytes], int] = {}
        self.commits: dict[int, dict[bytes, Commit]] = {}
        self.commit_counts: dict[tuple[int, bytes], int] = {}
        self.prepare_sent: set[int] = set()
        self.commit_sent: set[int] = set()
        self.own_wires: dict[tuple[str, int], bytes] = {}  # (kind, view) -> own vote, for retransmission
        self.prepared: PreparedCertificate | None = None  # highest view; survives view changes
        self.certificate: Certificate | None = None  # a valid commit certificate for this height
        self.active_senders: set[bytes] = set()  # verified voters in the current view or later
        self.proposal_requested: int | None = None
        self.persisted_blocks: set[tuple[bytes, bytes]] = set()
        self.persisted_preprepares: set[int] = set()


@dataclass
class _PendingNewView:
    """A NEW-VIEW accepted while this replica is below its start height h*."""

    start_height: int
    preprepare: PrePrepare | None
    payload: bytes | None = field(repr=False)


class Replica:
    """One validator's consensus state. Feed events to `step`; perform the returned actions."""

    def __init__(
        self,
        config: ReplicaConfig,
        key: KeyPair,
        committed_height: int,
        committed_hash: bytes,
        wal: list[tuple[bytes, bytes]],
        *,
        committed_certificate: dict | None = None,
        verify_signature: VerifyFunction = crypto.verify,
    ):
        """Restore a replica from the driver's committed chain head and its WAL records.

        committed_certificate is the stored certificate of block committed_height (the
        replica needs it to prove its height in a VIEW-CHANGE; the WAL has it too unless
        the height came from catch-up just before a crash). verify_signature exists so a
        simulator can share one memo of verification results among many replicas.
        Raises ValueError for a corrupt WAL record.
        """
        if type(committed_height) is not int or committed_height < 0:
            raise ValueError("committed_height must be a non-negative int")
        if type(committed_hash) is not bytes or len(committed_hash) != 32:
            raise ValueError("committed_hash must be 32 bytes")
        self._config = config
        self._quorum = Quorum(tuple(config.validators))
        if key.public_key not in self._quorum.index:
            raise ValueError("this replica's key is not a validator")
        self._key = key
        self._me = key.public_key
        self._limits = Limits(
            validators_max=self._quorum.n,
            payload_bytes_max=config.payload_bytes_max,
            header_bytes_max=config.header_bytes_max,
        )
        self._signatures = SignatureChecker(verify_signature, config.signature_cache_size)
        self._counters: dict[str, int] = {}
        self._actions: list = []
        self._now = 0
        # Chain position.
        self._height = committed_height
        self._committed_hash = committed_hash
        self._certificate: Certificate | None = None
        self._round = _Height(committed_height + 1)
        # View state.
        self._view = 0
        self._mode = NORMAL
        self._vc_target: int | None = None
        self._view_changes: dict[bytes, ViewChange] = {}  # latest valid one per sender
        self._view_change_wires: dict[bytes, bytes] = {}  # its wire bytes, to drop retransmissions unread
        self._own_view_change_wire: bytes | None = None
        self._new_view_sent = -1  # highest view this replica sent a NEW-VIEW for
        self._new_view_wire: bytes | None = None  # the NEW-VIEW that started the current view
        self._view_start_height = committed_height + 1
        self._pending_new_view: _PendingNewView | None = None
        self._failed_views = 0
        # Timers (tick numbers) and work.
        self._has_work = False
        self._stalled = False
        self._stall_since: int | None = None
        self._progress_since: int | None = None
        self._vc_timer_since: int | None = None
        self._retransmit_at = 0
        # Own signatures by (kind, height, view) -> digest: never sign a second one.
        self._own_votes: dict[tuple[str, int, int], bytes | tuple[bytes, bytes]] = {}
        # Future messages, bounded by the height and view windows.
        self._buffer: dict[tuple[str, bytes, int, int], PrePrepare | Prepare | Commit] = {}
        self._buffer_bytes = 0
        # Catch-up.
        self._ahead: dict[bytes, int] = {}  # sender -> highest height above h+1 it sent
        self._catch_up_peers: dict[bytes, None] = {}
        self._behind_since: int | None = None
        self._syncing = False
        self._sync_since = 0
        self._help_sent: dict[bytes, tuple[tuple[int, int], int]] = {}
        self._restore(wal, committed_certificate)
        self._startup_actions = self._actions
        self._actions = []

    # ------------------------------------------------------------------------------
    # Read-only state for /v1/status and metrics.

    @property
    def view(self) -> int:
        return self._view

    @property
    def height(self) -> int:
        """The committed height."""
        return self._height

    @property
    def primary(self) -> bytes:
        return self._quorum.primary(self._view)

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def syncing(self) -> bool:
        return self._syncing

    @property
    def counters(self) -> dict[str, int]:
        counters = dict(self._counters)
        counters["signature_verifications"] = self._signatures.verifications
        return counters

    @property
    def log_size(self) -> int:
        """Messages and votes held in memory (bounded by n, W and Vmax)."""
        round_ = self._round
        return (
            len(self._buffer)
            + len(self._view_changes)
            + len(self._own_votes)
            + len(round_.blocks)
            + len(round_.preprepares)
            + sum(len(votes) for votes in round_.prepares.values())
            + sum(len(votes) for votes in round_.commits.values())
        )

    # ------------------------------------------------------------------------------
    # The state machine.

    def step(self, event) -> list:
        """Apply one event and return the actions to perform, in order."""
        self._actions = self._startup_actions
        self._startup_actions = []
        kind = type(event)
        if kind is Tick:
            self._on_tick()
        elif kind is Receive:
            self._on_receive(event)
        elif kind is BlockChecked:
            self._on_block_checked(event)
        elif kind is ProposalBuilt:
            self._on_proposal_built(event)
        elif kind is WorkChanged:
            self._on_work_changed(event)
        elif kind is Synced:
            self._on_synced(event)
        else:
            raise TypeError(f"not a consensus event: {event!r}")
        actions, self._actions = self._actions, []
        return actions

    # ------------------------------------------------------------------------------
    # Small helpers.

    def _emit(self, action) -> None:
        self._actions.append(action)

    def _count(self, name: str, amount: int = 1) -> None:
        self._counters[name] = self._counters.get(name, 0) + amount

    def _drop(self, reason: str) -> None:
        self._count("dropped." + reason)

    def _alarm(self, reason: str) -> None:
        self._count("alarms")
        self._emit(Alarm(reason))

    def _persist(self, key: bytes, record: bytes) -> None:
        self._emit(Persist(key, wal_records.seal(key, record)))

    def _broadcast(self, data: bytes) -> None:
        if self._quorum.n > 1:
            self._emit(Broadcast(data))

    def _timeout(self, base_ticks: int) -> int:
        return base_ticks << min(self._failed_views, self._config.timeout_doublings_max)

    def _remember_own(self, signed: Signed, kind: str) -> None:
        self._signatures.remember(signed.signer, TAGS[kind], signed.body, signed.signature)

    def _verified(self, message) -> bool:
        signed = message.signed
        if self._signatures.check(signed.signer, TAGS[message.kind], signed.body, signed.signature):
            return True
        self._drop("bad_signature")
        return False

    def _may_sign(self, kind: str, view: int, digest) -> bool:
        """False if this replica already signed a (kind, height, view) vote; counts a conflict."""
        existing = self._own_votes.get((kind, self._round.height, view))
        if existing is None:
            return True
        if existing != digest:
            self._count("refused_conflicting_vote")
        return False

    # ------------------------------------------------------------------------------
    # Messages in.

    def _on_receive(self, event: Receive) -> None:
        sender, data = event.sender, event.data
        if type(sender) is not bytes or type(data) is not bytes:
            self._drop("bad_encoding")
            return
        if not self._quorum.is_validator(sender):
            self._drop("unknown_sender")
            return
        if sender == self._me:
            self._drop("from_self")
            return
        if data == self._view_change_wires.get(sender):
            # A retransmitted VIEW-CHANGE: skip decoding it again, but its sender may
            # still lack what it needs from us (the help message may have been lost).
            self._drop("duplicate")
            self._help_view_change_sender(sender, self._view_changes[sender])
            return
        try:
            message = decode_message(data, self._config.chain_id, self._limits)
        except MessageError as exc:
            self._drop(exc.reason)
            return
        self._count("received." + message.kind)
        if type(message) is NewView:
            self._on_new_view(message, sender, data)
        elif type(message) is ViewChange:
            self._on_view_change(message, sender, data)
        else:
            self._dispatch(message, sender)

    def _dispatch(self, message, sender: bytes) -> None:
        kind = type(message)
        if kind is Prepare:
            self._on_prepare(message, sender)
        elif kind is Commit:
            self._on_commit(message, sender)
        elif kind is PrePrepare:
            self._on_preprepare(message, sender)
        else:
            self._on_certificate(message, sender)

    def _admit(self, message, sender: bytes) -> bool:
        """Whether a normal-case message is for now; buffer or drop it otherwise (watermarks)."""
        if message.signer != sender:
            self._drop("signer_mismatch")
            return False
        next_height = self._height + 1
        if message.height < next_height:
            if message.height < self._height:
                self._help_with_certificate(sender)  # the sender is two or more heights behind
            self._drop("stale_height")
            return False
        if message.height > next_height:
            self._note_ahead(sender, message.height)
        if message.height > self._height + self._config.height_window:
            self._drop("beyond_height_window")
            return False
        if message.view > self._view + self._config.view_window:
            self._drop("beyond_view_window")
            return False
        # Stale views are dropped at every height, before anything is buffered: views only
        # grow, so such a message could never be used, and buffering it would let a peer
        # fill the buffer with every view below ours (the bound is Vmax views, not v).
        if message.kind == KIND_COMMIT:
            # A quorum of commits is final in any view and any mode: a few views back still count.
            if message.view + self._config.view_window < self._view:
                self._drop("stale_view")
                return False
        elif message.view < self._view:
            self._drop("stale_view")
            return False
        if message.height > next_height:
            self._buffer_message(message, sender)
            return False
        if message.kind == KIND_COMMIT:
            return True
        if message.view > self._view:
            self._buffer_message(message, sender)
            return False
        if self._mode != NORMAL:
            self._drop("view_change_in_progress")
            return False
        return True

    def _note_conflict(self, message) -> None:
        """A second, different vote from one signer for one (kind, view, height)."""
        if self._verified(message):
            self._count("equivocations")
            self._drop("equivocation")

    # ------------------------------------------------------------------------------
    # Normal case: proposal and pre-prepare.

    def _maybe_propose(self) -> None:
        if self._mode != NORMAL or not self._has_work or self._quorum.primary(self._view) != self._me:
            return
        round_ = self._round
        view = self._view
        if view in round_.preprepares or round_.proposal_requested == view or self._pending_new_view is not None:
            return
        if self._view_start_height > round_.height or (KIND_PREPREPARE, round_.height, view) in self._own_votes:
            return
        round_.proposal_requested = view
        self._emit(BuildProposal(round_.height, view, self._committed_hash))

    def _on_proposal_built(self, event: ProposalBuilt) -> None:
        round_ = self._round
        view = self._view
        if (
            event.height != round_.height
            or event.view != view
            or self._mode != NORMAL
            or round_.proposal_requested != view
            or view in round_.preprepares
        ):
            self._drop("stale_proposal")
            return
        header_bytes, payload = event.header, event.payload
        if type(header_bytes) is not bytes or type(payload) is not bytes or len(payload) > self._config.payload_bytes_max:
            self._alarm("ProposalBuilt: header/payload missing or payload too large")
            return
        try:
            header = parse_header(header_bytes, self._limits)
        except MessageError as exc:
            self._alarm(f"ProposalBuilt: malformed header ({exc})")
            return
        if (
            header.chain != self._config.chain_id
            or header.height != round_.height
            or header.prev != self._committed_hash
            or header.proposer != self._me
            or header.view != view
        ):
            self._alarm("ProposalBuilt: header does not match (chain, height, prev, proposer, view) requested")
            return
        block_hash, payload_hash = codec.sha256(header_bytes), codec.sha256(payload)
        if not self._may_sign(KIND_PREPREPARE, view, (block_hash, payload_hash)):
            return
        preprepare = sign_preprepare(
            self._key, self._config.chain_id, view, round_.height, header_bytes, None, block_hash, payload_hash
        )
        self._remember_own(preprepare.signed, KIND_PREPREPARE)
        block = self._register_block(block_hash, payload_hash, header_bytes, payload)
        block.status = _VALID  # built by our own driver
        round_.preprepares[view] = preprepare
        self._persist_block(block)
        self._persist_preprepare(preprepare)
        self._own_votes[(KIND_PREPREPARE, round_.height, view)] = (block_hash, payload_hash)
        self._broadcast(encode_preprepare(preprepare, payload))
        self._count("proposals")
        self._check_prepared(view)

    def _on_preprepare(self, preprepare: PrePrepare, sender: bytes) -> None:
        if preprepare.signer != self._quorum.primary(preprepare.view):
            self._drop("not_primary")
            return
        if not self._admit(preprepare, sender):
            return
        if preprepare.height < self._view_start_height:
            self._drop("below_view_start")  # that height was certified before this view began
            return
        round_ = self._round
        known = round_.preprepares.get(preprepare.view)
        if known is not None:
            if known.signed.signature == preprepare.signed.signature:
                self._drop("duplicate")
            else:
                self._note_conflict(preprepare)
            return
        if not self._verified(preprepare) or not self._fresh_header_ok(preprepare):
            return
        if codec.sha256(preprepare.payload) != preprepare.payload_hash:
            self._drop("payload_mismatch")
            return
        payload = preprepare.payload
        preprepare = replace(preprepare, payload=None)  # the block keeps the payload
        round_.preprepares[preprepare.view] = preprepare
        round_.active_senders.add(sender)
        block = self._register_block(preprepare.block_hash, preprepare.payload_hash, preprepare.header, payload)
        if block.status == _VALID:
            self._maybe_prepare(preprepare.view)
        else:
            self._request_check(block, fresh=True)

    def _fresh_header_ok(self, preprepare: PrePrepare) -> bool:
        """A fresh proposal's header: for our next height, on our head, by the primary of its view."""
        if codec.sha256(preprepare.header) != preprepare.block_hash:
            self._drop("header_mismatch")
            return False
        try:
            header = parse_header(preprepare.header, self._limits)
        except MessageError:
            self._drop("bad_header")
            return False
        if header.chain != self._config.chain_id or header.height != preprepare.height:
            self._drop("bad_header")
            return False
        if header.prev != self._committed_hash:
            self._drop("wrong_parent")
            return False
        if header.view != preprepare.view or header.proposer != self._quorum.primary(header.view):
            # Carried-over blocks arrive only inside a NEW-VIEW, never as a bare PRE-PREPARE.
            self._drop("not_fresh")
            return False
        return True

    # ------------------------------------------------------------------------------
    # Blocks and the driver's checks.

    def _register_block(self, block_hash: bytes, payload_hash: bytes, header: bytes, payload: bytes | None) -> _Block:
        round_ = self._round
        block = round_.blocks.get((block_hash, payload_hash))
        if block is None:
            block = round_.blocks[(block_hash, payload_hash)] = _Block(block_hash, payload_hash, header, payload)
        elif block.payload is None and payload is not None:
            block.payload = payload
        return block

    def _request_check(self, block: _Block, fresh: bool) -> None:
        """Ask the driver to validate a block, one question per digest at a time."""
        if block.status == _VALID or block.payload is None:
            return
        if block.status == _INVALID and not (block.rejected_fresh and not fresh):
            return
        round_ = self._round
        pending = round_.checking.get(block.block_hash)
        if pending is not None:
            if (pending[0] != block.key or (pending[1] and not fresh)) and (block.key, fresh) not in round_.check_queue:
                round_.check_queue.append((block.key, fresh))
            return
        round_.checking[block.block_hash] = (block.key, fresh)
        block.status = _CHECKING
        self._emit(CheckBlock(block.header, block.payload, fresh))

    def _on_block_checked(self, event: BlockChecked) -> None:
        round_ = self._round
        pending = round_.checking.pop(event.digest, None) if type(event.digest) is bytes else None
        if pending is None:
            self._drop("unexpected_block_check")
            return
        key, fresh = pending
        block = round_.blocks[key]
        if event.valid is True:
            block.status = _VALID
        else:
            block.status = _INVALID
            block.rejected_fresh = fresh
            self._count("blocks_rejected")
        queued = [item for item in round_.check_queue if item[0][0] == event.digest]
        round_.check_queue = [item for item in round_.check_queue if item[0][0] != event.digest]
        for queued_key, queued_fresh in queued:
            self._request_check(round_.blocks[queued_key], queued_fresh)
        if block.status == _VALID:
            for view, preprepare in list(round_.preprepares.items()):
                if (preprepare.block_hash, preprepare.payload_hash) == key:
                    self._maybe_prepare(view)
                    self._check_prepared(view)
            self._try_new_view()
        self._check_committed()

    def _persist_block(self, block: _Block) -> None:
        round_ = self._round
        if block.key not in round_.persisted_blocks:
            round_.persisted_blocks.add(block.key)
            key = wal_records.block_key(round_.height, block.block_hash)
            # canonical([header, payload]), built around the payload rather than copying it twice
            self._emit(Persist(key, wal_records.seal_parts(key, envelope_parts([block.header, block.payload]))))

    def _persist_preprepare(self, preprepare: PrePrepare) -> None:
        round_ = self._round
        if preprepare.view not in round_.persisted_preprepares:
            round_.persisted_preprepares.add(preprepare.view)
            key = wal_records.vote_key(round_.height, wal_records.KIND_PREPREPARE, preprepare.view)
            self._persist(key, codec.encode(preprepare.signed.to_list() + [preprepare.header]))

    # ------------------------------------------------------------------------------
    # Normal case: prepare and commit.

    def _maybe_prepare(self, view: int) -> None:
        round_ = self._round
        preprepare = round_.preprepares.get(view)
        if preprepare is None or view != self._view or self._mode != NORMAL or view in round_.prepare_sent:
            return
        if self._quorum.primary(view) == self._me:
            return  # the primary's PRE-PREPARE is its vote
        block = round_.blocks.get((preprepare.block_hash, preprepare.payload_hash))
        if block is None or block.status != _VALID:
            return
        digest = (preprepare.block_hash, preprepare.payload_hash)
        round_.prepare_sent.add(view)
        if not self._may_sign(KIND_PREPARE, view, digest):
            return
        prepare = sign_prepare(self._key, self._config.chain_id, view, round_.height, *digest)
        self._remember_own(prepare.signed, KIND_PREPARE)
        wire = encode_vote(prepare)
        self._persist_block(block)
        self._persist_preprepare(preprepare)
        self._persist(wal_records.vote_key(round_.height, wal_records.KIND_PREPARE, view), wire)
        self._own_votes[(KIND_PREPARE, round_.height, view)] = digest
        round_.own_wires[(KIND_PREPARE, view)] = wire
        self._broadcast(wire)
        self._add_prepare(prepare)
        self._check_prepared(view)

    def _add_prepare(self, prepare: Prepare) -> None:
        round_ = self._round
        round_.prepares.setdefault(prepare.view, {})[prepare.signer] = prepare
        key = (prepare.view, prepare.block_hash, prepare.payload_hash)
        round_.prepare_counts[key] = round_.prepare_counts.get(key, 0) + 1

    def _on_prepare(self, prepare: Prepare, sender: bytes) -> None:
        if prepare.signer == self._quorum.primary(prepare.view):
            self._drop("prepare_from_primary")
            return
        if not self._admit(prepare, sender):
            return
        known = self._round.prepares.get(prepare.view, {}).get(sender)
        if known is not None:
            if known.signed.signature == prepare.signed.signature:
                self._drop("duplicate")
            else:
                self._note_conflict(prepare)
            return
        if not self._verified(prepare):
            return
        self._add_prepare(prepare)
        self._round.active_senders.add(sender)
        self._check_prepared(prepare.view)

    def _check_prepared(self, view: int) -> None:
        """PRE-PREPARE + q-1 matching PREPAREs from backups: persist the certificate, send COMMIT."""
        round_ = self._round
        preprepare = round_.preprepares.get(view)
        if preprepare is None or view != self._view or self._mode != NORMAL or view in round_.commit_sent:
            return
        digest = (preprepare.block_hash, preprepare.payload_hash)
        block = round_.blocks.get(digest)
        if block is None or block.status != _VALID:
            return
        quorum = self._quorum
        if round_.prepare_counts.get((view, *digest), 0) + 1 < quorum.q:
            return
        matching = [
            prepare for prepare in round_.prepares.get(view, {}).values()
            if (prepare.block_hash, prepare.payload_hash) == digest
        ]
        matching.sort(key=lambda prepare: quorum.index[prepare.signer])
        certificate = PreparedCertificate(preprepare, tuple(matching[: quorum.q - 1]))
        if round_.prepared is None or round_.prepared.view < view:
            round_.prepared = certificate
            self._persist(wal_records.prepared_key(round_.height), codec.encode(certificate.to_obj()))
        round_.commit_sent.add(view)
        if not self._may_sign(KIND_COMMIT, view, preprepare.block_hash):
            return
        commit = sign_commit(self._key, self._config.chain_id, view, round_.height, preprepare.block_hash)
        self._remember_own(commit.signed, KIND_COMMIT)
        wire = encode_vote(commit)
        self._persist(wal_records.vote_key(round_.height, wal_records.KIND_COMMIT, view), wire)
        self._own_votes[(KIND_COMMIT, round_.height, view)] = preprepare.block_hash
        round_.own_wires[(KIND_COMMIT, view)] = wire
        self._broadcast(wire)
        self._add_commit(commit)

    def _add_commit(self, commit: Commit) -> None:
        round_ = self._round
        votes = round_.commits.setdefault(commit.view, {})
        votes[commit.signer] = commit
        key = (commit.view, commit.block_hash)
        count = round_.commit_counts[key] = round_.commit_counts.get(key, 0) + 1
        if count >= self._quorum.q and round_.certificate is None:
            signers = self._quorum.ordered(
                signer for signer, vote in votes.items() if vote.block_hash == commit.block_hash
            )[: self._quorum.q]
            round_.certificate = Certificate(
                round_.height, commit.view, commit.block_hash,
                tuple((signer, votes[signer].signed.signature) for signer in signers),
            )
        self._check_committed()

    def _on_commit(self, commit: Commit, sender: bytes) -> None:
        if not self._admit(commit, sender):
            return
        known = self._round.commits.get(commit.view, {}).get(sender)
        if known is not None:
            if known.signed.signature == commit.signed.signature:
                self._drop("duplicate")
            else:
                self._note_conflict(commit)
            return
        if not self._verified(commit):
            return
        if commit.view >= self._view:
            self._round.active_senders.add(sender)
        self._add_commit(commit)

    def _check_committed(self, urgent: bool = False) -> None:
        """Commit once a certificate for the next height and its validated block are both here.

        Without the block, fetch it: at once when `urgent` (a certificate message, sent
        only to a replica that is behind), else after the grace period (the
        PRE-PREPARE may merely be late).
        """
        round_ = self._round
        certificate = round_.certificate
        if certificate is None:
            return
        candidates = [block for block in round_.blocks.values() if block.block_hash == certificate.block_hash]
        for block in candidates:
            if block.status == _VALID:
                self._commit_block(block, certificate)
                return
        for block in candidates:
            # One rejected only by the clock is checked again without it. One rejected by the
            # rules is no evidence of divergence: votes name the header, not the payload, so a
            # Byzantine primary can pair the certified header with another payload. Fetch the
            # certified block instead; the driver judges whether its ledger disagrees.
            self._request_check(block, fresh=False)
        if not any(block.payload is not None and block.status != _INVALID for block in candidates):
            self._request_catch_up(certificate.signers, immediate=urgent)

    def _commit_block(self, block: _Block, certificate: Certificate) -> None:
        height = self._round.height
        certificate_dict = certificate.to_dict()
        # The block before its certificate: a replica that validated it without voting (it
        # was in a view change) and crashes before CommitBlock is durable must find both.
        self._persist_block(block)
        self._persist(wal_records.CERTIFICATE_KEY, codec.encode(certificate_dict))
        self._emit(CommitBlock(height, block.header, block.payload, certificate_dict))
        # Keep this height's records until the next commit: if the driver crashes before
        # CommitBlock is durable, the restarted replica re-commits from them.
        self._emit(Forget(height))
        self._count("commits")
        self._advance(height, block.block_hash, certificate)

    def _advance(self, height: int, block_hash: bytes, certificate: Certificate | None) -> None:
        """Move to a new committed height: reset per-height state, GC, adopt a certified view."""
        self._height = height
        self._committed_hash = block_hash
        self._certificate = certificate
        self._round = _Height(height + 1)
        self._failed_views = 0
        # The driver's work flags described the mempool before this block; it re-sends them.
        self._has_work = False
        self._stalled = False
        self._stall_since = None
        self._progress_since = None
        self._own_votes = {key: digest for key, digest in self._own_votes.items() if key[1] > height}
        self._ahead = {sender: seen for sender, seen in self._ahead.items() if seen > height + 1}
        self._behind_since = self._now if len(self._ahead) > self._quorum.f else None
        self._catch_up_peers = {}
        if certificate is not None:
            self._adopt_certified_view(certificate.view)
        pending = self._pending_new_view
        if pending is not None and pending.start_height <= height:
            self._pending_new_view = None
            if pending.start_height == height and pending.preprepare is not None:
                self._accept_carried(pending.preprepare, pending.payload)
        elif pending is not None:
            # Still below the new view's start (the peer we fetched from was behind it too):
            # fetch again after the grace period rather than wait for the progress timer.
            self._behind_since = self._now
        self._prune_buffer()
        self._replay_buffer()
        self._try_new_view()
        self._maybe_propose()

    # ------------------------------------------------------------------------------
    # View change.

    def _set_view(self, view: int, start_height: int) -> None:
        """Enter `view` in normal mode (never lower) and persist it before anything is sent in it.

        start_height is the first height decided in this view: every lower height was
        certified before it began, so no PRE-PREPARE of this view below it is ever accepted.
        """
        if view <= self._view:
            raise AssertionError(f"view may only grow: {self._view} -> {view}")
        self._persist(wal_records.VIEW_KEY, codec.encode({"view": view, "start": start_height}))
        self._view = view
        self._mode = NORMAL
        self._vc_target = None
        self._vc_timer_since = None
        self._progress_since = None
        self._retransmit_at = self._now
        self._stall_since = self._now if self._stalled else None
        self._view_changes = {sender: vc for sender, vc in self._view_changes.items() if vc.view > view}
        self._view_change_wires = {
            sender: wire for sender, wire in self._view_change_wires.items() if sender in self._view_changes
        }
        self._prune_round()
        self._new_view_wire = None
        self._view_start_height = start_height
        self._pending_new_view = None
        self._count("views_entered")

    def _prune_round(self) -> None:
        """Forget this height's state of views left behind, so many view changes at one
        height keep memory bounded: votes of older views (commits within the view
        window still count), and blocks nothing refers to any more."""
        round_ = self._round
        view = self._view
        floor = view - self._config.view_window
        round_.active_senders = set()
        round_.preprepares = {v: pp for v, pp in round_.preprepares.items() if v >= view}
        round_.prepares = {v: votes for v, votes in round_.prepares.items() if v >= view}
        round_.prepare_counts = {key: count for key, count in round_.prepare_counts.items() if key[0] >= view}
        round_.commits = {v: votes for v, votes in round_.commits.items() if v >= floor}
        round_.commit_counts = {key: count for key, count in round_.commit_counts.items() if key[0] >= floor}
        round_.own_wires = {key: wire for key, wire in round_.own_wires.items() if key[1] >= view}
        keep = {(pp.block_hash, pp.payload_hash) for pp in round_.preprepares.values()}
        keep.update(key for key, _ in round_.checking.values())
        keep.update(key for key, _ in round_.check_queue)
        if round_.prepared is not None:
            keep.add((round_.prepared.block_hash, round_.prepared.payload_hash))
        if round_.certificate is not None:
            keep.update(key for key in round_.blocks if key[0] == round_.certificate.block_hash)
        # A valid block of an older view may still be carried over by a NEW-VIEW; keep the
        # newest few of those (their payload may not be attached to the NEW-VIEW).
        spare = [key for key, block in round_.blocks.items() if key not in keep and block.status == _VALID]
        keep.update(spare[-self._config.view_window:])
        round_.blocks = {key: block for key, block in round_.blocks.items() if key in keep}

    def _adopt_certified_view(self, view: int) -> None:
        """A certificate of our committed height in view w proves w was entered at or below it.

        Heights above the height a view started at are fresh in that view, so a replica
        that reached a height certified in w may work in w (unless it already asked for a
        higher view: it must not then vote in a lower one, pitfall 14).
        """
        if view <= self._view or (self._vc_target is not None and self._vc_target > view):
            return
        self._set_view(view, self._height + 1)
        self._prune_buffer()

    def _start_view_change(self, target: int, reason: str) -> None:
        if target <= self._view or (self._vc_target is not None and target <= self._vc_target):
            raise AssertionError(f"view-change target {target} is not above the current one")
        if self._height > 0 and self._certificate is None:
            if not self._counters.get("cannot_prove_height"):
                self._alarm(f"no certificate for committed height {self._height}: cannot send VIEW-CHANGE")
            self._count("cannot_prove_height")
            return
        round_ = self._round
        prepared = round_.prepared
        view_change = sign_view_change(
            self._key, self._config.chain_id, target, self._height, self._certificate, prepared
        )
        self._remember_own(view_change.signed, view_change.kind)
        payload = self._held_payload(prepared.block_hash, prepared.payload_hash) if prepared is not None else None
        self._persist(wal_records.VIEW_CHANGE_KEY, encode_view_change(view_change, None))
        wire = encode_view_change(view_change, payload)
        self._broadcast(wire)
        self._own_view_change_wire = wire
        self._mode = VIEW_CHANGE
        self._vc_target = target
        self._failed_views += 1
        self._vc_timer_since = None
        self._progress_since = None
        self._retransmit_at = self._now
        self._view_changes[self._me] = replace(view_change, payload=payload)
        self._count("view_changes_started")
        self._count("view_change." + reason)
        self._check_view_change_timer()
        self._try_new_view()

    def _held_payload(self, block_hash: bytes, payload_hash: bytes) -> bytes | None:
        """The payload of a block, from our own blocks or a VIEW-CHANGE that carried it."""
        block = self._round.blocks.get((block_hash, payload_hash))
        if block is not None and block.payload is not None:
            return block.payload
        for view_change in self._view_changes.values():
            prepared = view_change.prepared
            if (
                view_change.payload is not None
                and prepared is not None
                and (prepared.block_hash, prepared.payload_hash) == (block_hash, payload_hash)
            ):
                return view_change.payload
        return None

    def _on_view_change(self, view_change: ViewChange, sender: bytes, wire: bytes) -> None:
        if view_change.signer != sender:
            self._drop("signer_mismatch")
            return
        if view_change.view <= self._view:
            self._help_view_change_sender(sender, view_change)
            self._drop("stale_view")
            return
        if view_change.view > self._view + self._config.view_window:
            self._drop("beyond_view_window")
            return
        known = self._view_changes.get(sender)
        if known is not None and known.view >= view_change.view:
            self._drop("duplicate" if known.signed.signature == view_change.signed.signature else "stale_view_change")
            self._help_view_change_sender(sender, known)
            return
        if not view_change_is_valid(view_change, self._config.chain_id, self._quorum, self._signatures):
            self._drop("invalid_view_change")
            return
        payload = view_change.payload
        if payload is not None and (
            view_change.prepared is None or codec.sha256(payload) != view_change.prepared.payload_hash
        ):
            self._count("view_change_payload_mismatch")
            payload = None
        self._view_changes[sender] = replace(view_change, payload=payload)
        self._view_change_wires[sender] = wire
        if view_change.height > self._height:
            self._request_catch_up((sender, *view_change.certificate.signers), immediate=True)
        else:
            self._help_view_change_sender(sender, view_change)
        self._check_join_rule()
        self._check_view_change_timer()
        self._try_new_view()

    def _check_join_rule(self) -> None:
        """f+1 others want views above ours: at least one is honest, so join the smallest."""
        reference = self._vc_target if self._mode == VIEW_CHANGE else self._view
        higher = [vc.view for sender, vc in self._view_changes.items() if sender != self._me and vc.view > reference]
        if len(higher) > self._quorum.f:
            self._start_view_change(min(higher), "join")

    def _check_view_change_timer(self) -> None:
        """Start the view-change timer only once q replicas want the target (pitfall 3)."""
        if self._mode != VIEW_CHANGE or self._vc_timer_since is not None:
            return
        wanting = sum(1 for vc in self._view_changes.values() if vc.view >= self._vc_target)
        if wanting >= self._quorum.q:
            self._vc_timer_since = self._now

    def _try_new_view(self) -> None:
        """As primary of the target view with q VIEW-CHANGEs: send NEW-VIEW and enter the view."""
        if self._mode != VIEW_CHANGE:
            return
        target = self._vc_target
        if self._quorum.primary(target) != self._me or self._new_view_sent >= target:
            return
        senders = self._quorum.ordered(sender for sender, vc in self._view_changes.items() if vc.view == target)
        if len(senders) < self._quorum.q:
            return
        view_changes = tuple(self._view_changes[sender] for sender in senders)
        plan = plan_new_view(view_changes)
        if plan.start_height > self._height:
            self._request_catch_up(plan.certificate.signers, immediate=True)
            return
        carried = plan.carried
        preprepare = None
        payload = None
        if carried is not None:
            payload = self._held_payload(carried.block_hash, carried.payload_hash)
            if plan.start_height == self._height:
                if payload is None:
                    self._count("new_view_waiting_for_payload")
                    return
                block = self._register_block(carried.block_hash, carried.payload_hash, carried.header, payload)
                if block.status != _VALID:
                    self._request_check(block, fresh=False)  # we vote for it: our driver checks it first
                    return
                digest = (carried.block_hash, carried.payload_hash)
                earlier = self._own_votes.get((KIND_PREPREPARE, self._round.height, target), digest)
                if earlier != digest:
                    self._count("refused_conflicting_vote")
                    return  # signed another PRE-PREPARE for (target, h+1) before a crash: cannot lead this view
            # Ed25519 signatures are deterministic: re-signing an identical body after a
            # restart reproduces the same bytes.
            preprepare = sign_preprepare(
                self._key, self._config.chain_id, target, plan.start_height + 1, carried.header, None,
                carried.block_hash, carried.payload_hash,
            )
            self._remember_own(preprepare.signed, KIND_PREPREPARE)
        new_view = sign_new_view(self._key, self._config.chain_id, target, view_changes, preprepare)
        self._remember_own(new_view.signed, new_view.kind)
        self._new_view_sent = target
        if preprepare is not None and plan.start_height == self._height:
            # The re-pre-prepare is a vote: its records go first, so a durable NEW-VIEW
            # record always comes with the PRE-PREPARE it contains.
            block = self._round.blocks[(carried.block_hash, carried.payload_hash)]
            self._persist_block(block)
            self._persist_preprepare(preprepare)
            self._own_votes[(KIND_PREPREPARE, self._round.height, target)] = (carried.block_hash, carried.payload_hash)
        self._persist(wal_records.NEW_VIEW_KEY, encode_new_view(new_view, None))
        self._count("new_views_sent")
        self._enter_new_view(target, plan, preprepare, payload, encode_new_view(new_view, payload), announce=True)

    def _on_new_view(self, new_view: NewView, sender: bytes, data: bytes) -> None:
        # Only the primary of the view signs its NEW-VIEW, but anyone may deliver it: a
        # backup forwards the one it entered the view with to a peer still asking for the
        # view (help). The message proves itself (its signature and q VIEW-CHANGEs).
        if new_view.signer != self._quorum.primary(new_view.view):
            self._drop("not_primary")
            return
        if new_view.view <= self._view:
            self._drop("stale_view")
            return
        if self._vc_target is not None and new_view.view < self._vc_target:
            self._drop("below_own_view_change")  # we asked for a higher view: never vote lower
            return
        if not new_view_signature_is_valid(new_view, self._signatures):
            self._drop("bad_signature")
            return
        valid: list[ViewChange] = []
        seen: set[bytes] = set()
        for view_change in new_view.view_changes:
            # Each VIEW-CHANGE is judged on its own: an invalid one is skipped, it does
            # not hide the valid ones (pitfall 12).
            if (
                view_change.view != new_view.view
                or view_change.signer in seen
                or not view_change_is_valid(view_change, self._config.chain_id, self._quorum, self._signatures)
            ):
                self._count("new_view_invalid_view_change")
                continue
            seen.add(view_change.signer)
            valid.append(view_change)
        if len(valid) < self._quorum.q:
            self._reject_new_view(new_view, "too_few_view_changes")
            return
        plan = plan_new_view(valid)
        carried, preprepare = plan.carried, new_view.preprepare
        payload = None
        if carried is None:
            if preprepare is not None:
                self._reject_new_view(new_view, "unexpected_preprepare")
                return
        else:
            if (
                preprepare is None
                or preprepare.signer != new_view.signer
                or preprepare.view != new_view.view
                or preprepare.height != plan.start_height + 1
                or preprepare.block_hash != carried.block_hash
                or preprepare.payload_hash != carried.payload_hash
            ):
                self._reject_new_view(new_view, "wrong_carried_block")
                return
            signed = preprepare.signed
            if not self._signatures.check(signed.signer, PREPREPARE_TAG, signed.body, signed.signature):
                self._reject_new_view(new_view, "bad_preprepare_signature")
                return
            preprepare = replace(preprepare, header=carried.header)  # byte for byte, as first proposed
            if new_view.payload is not None and codec.sha256(new_view.payload) == carried.payload_hash:
                payload = new_view.payload
        self._enter_new_view(new_view.view, plan, preprepare, payload, data, announce=False)

    def _reject_new_view(self, new_view: NewView, reason: str) -> None:
        """A NEW-VIEW signed by the right primary but wrong: if it is the view we wait for, move on."""
        self._drop("bad_new_view." + reason)
        if self._mode == VIEW_CHANGE and new_view.view == self._vc_target:
            self._start_view_change(new_view.view + 1, "bad_new_view")

    def _enter_new_view(
        self, view: int, plan: NewViewPlan, preprepare: PrePrepare | None, payload: bytes | None,
        wire: bytes, announce: bool,
    ) -> None:
        self._set_view(view, plan.start_height + 1)
        if announce:
            self._broadcast(wire)
        self._new_view_wire = wire
        if plan.start_height > self._height:
            # Others committed up to h*: fetch those blocks, then take the carried one.
            self._pending_new_view = _PendingNewView(plan.start_height, preprepare, payload)
            self._request_catch_up(plan.certificate.signers, immediate=True)
        elif plan.start_height == self._height and preprepare is not None:
            self._accept_carried(preprepare, payload)
        self._prune_buffer()
        self._replay_buffer()
        self._maybe_propose()

    def _accept_carried(self, preprepare: PrePrepare, payload: bytes | None) -> None:
        """The NEW-VIEW's re-pre-prepare of a carried block, for our next height."""
        round_ = self._round
        header = parse_header(preprepare.header)  # already checked inside its prepared certificate
        if header.height != round_.height or header.prev != self._committed_hash:
            self._alarm(f"carried block for height {round_.height} does not extend our committed block")
            return
        round_.preprepares[preprepare.view] = preprepare
        block = self._register_block(preprepare.block_hash, preprepare.payload_hash, preprepare.header, payload)
        # Persisted now, not only when we vote: the view record is durable already, and a
        # replica restarted in this view would otherwise lack the one PRE-PREPARE it may
        # vote for (the primary's retransmitted NEW-VIEW is for a view it is already in).
        self._persist_preprepare(preprepare)
        if block.payload is not None:
            self._persist_block(block)
        if block.status == _VALID:
            self._maybe_prepare(preprepare.view)
            self._check_prepared(preprepare.view)
        elif block.payload is None:
            self._count("carried_block_without_payload")
        else:
            self._request_check(block, fresh=False)

    def _help_view_change_sender(self, peer: bytes, view_change: ViewChange) -> None:
        """A VIEW-CHANGE shows its sender below our height or view: show it how we got here.

        Rate-limited in _send_help; a retransmitted VIEW-CHANGE asks again, so a lost
        help message is eventually replaced.
        """
        if view_change.height < self._height:
            self._help_with_certificate(peer)
        elif view_change.height == self._height and view_change.view <= self._view:
            if self._new_view_wire is not None and self._view_start_height == self._height + 1:
                self._send_help(peer, self._new_view_wire)
            elif self._certificate is not None and self._certificate.view == self._view:
                self._help_with_certificate(peer)

    # ------------------------------------------------------------------------------
    # Catch-up and helping others catch up.

    def _on_certificate(self, message: CertificateMessage, sender: bytes) -> None:
        certificate = message.certificate
        round_ = self._round
        if certificate.height <= self._height:
            self._drop("stale_height")
            return
        if certificate.height == round_.height and round_.certificate is not None:
            # Known already, yet a peer thinks we are behind: still without the block, fetch it.
            self._drop("duplicate")
            self._check_committed(urgent=True)
            return
        if not certificate_is_valid(certificate, self._config.chain_id, self._quorum, self._signatures):
            self._drop("invalid_certificate")
            return
        if certificate.height == round_.height:
            round_.certificate = certificate
            self._check_committed(urgent=True)
        else:
            self._request_catch_up((sender, *certificate.signers), immediate=True)

    def _note_ahead(self, sender: bytes, height: int) -> None:
        """f+1 senders working above h+1 means at least one honest replica committed past us."""
        if self._ahead.get(sender, 0) < height:
            self._ahead[sender] = height
        if len(self._ahead) > self._quorum.f and self._behind_since is None:
            self._behind_since = self._now

    def _request_catch_up(self, peers, immediate: bool) -> None:
        for peer in peers:
            if peer != self._me and self._quorum.is_validator(peer):
                self._catch_up_peers[peer] = None
        if self._behind_since is None:
            self._behind_since = self._now
        if immediate:
            self._fetch()

    def _fetch(self) -> None:
        if self._syncing:
            return
        peers = set(self._catch_up_peers) | set(self._ahead)
        peers.discard(self._me)
        if not peers:
            peers = set(self._quorum.validators) - {self._me}
        self._emit(FetchBlocks(self._height + 1, tuple(self._quorum.ordered(peers))))
        self._syncing = True
        self._sync_since = self._now
        self._behind_since = None
        self._catch_up_peers = {}
        self._count("fetches")

    def _on_synced(self, event: Synced) -> None:
        self._syncing = False
        if type(event.height) is not int or event.height <= self._height:
            # The fetch made no progress; retry after the grace period if still behind.
            if self._pending_new_view is not None or len(self._ahead) > self._quorum.f:
                self._behind_since = self._now
            return
        if type(event.block_hash) is not bytes or len(event.block_hash) != 32:
            self._alarm("Synced without a 32-byte block_hash")
            return
        certificate = self._synced_certificate(event)
        if certificate is not None:
            self._persist(wal_records.CERTIFICATE_KEY, codec.encode(certificate.to_dict()))
        self._emit(Forget(event.height))
        self._count("synced")
        self._advance(event.height, event.block_hash, certificate)

    def _synced_certificate(self, event: Synced) -> Certificate | None:
        if event.certificate is None:
            self._alarm(f"Synced to {event.height} without a certificate: cannot prove this height in a view change")
            return None
        try:
            raw = dict(event.certificate)
            raw["sigs"] = [list(entry) for entry in raw.get("sigs", ())]
            certificate = parse_certificate(raw, self._limits)
        except (MessageError, TypeError, ValueError) as exc:
            self._alarm(f"Synced certificate is malformed: {exc}")
            return None
        if (
            certificate.height != event.height
            or certificate.block_hash != event.block_hash
            or not certificate_is_valid(certificate, self._config.chain_id, self._quorum, self._signatures)
        ):
            self._alarm(f"Synced certificate does not certify block {event.height}")
            return None
        return certificate

    def _help_with_certificate(self, peer: bytes) -> None:
        if self._certificate is not None:
            self._send_help(peer, encode_certificate_message(self._certificate))

    def _send_help(self, peer: bytes, wire: bytes) -> None:
        """At most one help message per peer per (height, view) and retransmit period."""
        stamp = (self._height, self._view)
        last = self._help_sent.get(peer)
        if last is not None and last[0] == stamp and self._now - last[1] < self._config.retransmit_ticks:
            return
        self._help_sent[peer] = (stamp, self._now)
        self._emit(Send(peer, wire))
        self._count("help_sent")

    # ------------------------------------------------------------------------------
    # Buffered future messages.

    def _buffer_message(self, message, sender: bytes) -> None:
        key = (message.kind, sender, message.view, message.height)
        if key in self._buffer:
            self._drop("duplicate")
            return
        size = len(message.payload) if type(message) is PrePrepare else 0
        if self._buffer_bytes + size > self._config.buffer_bytes_max:
            self._drop("buffer_full")
            return
        self._buffer[key] = message
        self._buffer_bytes += size
        self._count("buffered")

    def _unbuffer(self, key) -> PrePrepare | Prepare | Commit:
        message = self._buffer.pop(key)
        if type(message) is PrePrepare:
            self._buffer_bytes -= len(message.payload)
        return message

    def _prune_buffer(self) -> None:
        window = self._config.view_window
        for key in [
            key for key, message in self._buffer.items()
            if message.height <= self._height
            or (message.kind == KIND_COMMIT and message.view + window < self._view)
            or (message.kind != KIND_COMMIT and message.view < self._view)
        ]:
            self._unbuffer(key)

    def _replay_buffer(self) -> None:
        next_height = self._height + 1
        ready = [
            key for key, message in self._buffer.items()
            if message.height == next_height and (message.kind == KIND_COMMIT or message.view == self._view)
        ]
        for key in ready:
            if key in self._buffer:
                self._dispatch(self._unbuffer(key), key[1])

    # ------------------------------------------------------------------------------
    # Driver state and timers.

    def _on_work_changed(self, event: WorkChanged) -> None:
        stalled = event.stalled is True
        if stalled and not self._stalled:
            self._stall_since = self._now
        elif not stalled:
            self._stall_since = None
        self._stalled = stalled
        self._has_work = event.has_work is True
        self._maybe_propose()

    def _height_active(self) -> bool:
        """Work to do or a proposal in flight: only then may the progress timer run."""
        round_ = self._round
        return (
            self._has_work
            or self._stalled
            or self._view in round_.preprepares
            or self._pending_new_view is not None
            or len(round_.active_senders) > self._quorum.f
        )

    def _on_tick(self) -> None:
        self._now += 1
        if self._mode == NORMAL:
            self._tick_normal()
        else:
            self._tick_view_change()
        if self._syncing and self._now - self._sync_since >= self._config.sync_timeout_ticks:
            self._syncing = False
            self._count("sync_timeouts")
            if len(self._ahead) > self._quorum.f or self._pending_new_view is not None:
                self._behind_since = self._now
        if (
            not self._syncing
            and self._behind_since is not None
            and self._now - self._behind_since >= self._config.catchup_grace_ticks
        ):
            self._fetch()

    def _tick_normal(self) -> None:
        if not self._height_active():
            self._progress_since = None
            return
        if self._progress_since is None:
            self._progress_since = self._now
            self._retransmit_at = self._now
        elif self._now - self._progress_since >= self._timeout(self._config.progress_timeout_ticks):
            self._start_view_change(self._view + 1, "progress_timeout")
            return
        if self._stall_since is not None and self._now - self._stall_since >= self._timeout(self._config.stall_ticks):
            self._start_view_change(self._view + 1, "stalled")
            return
        if self._now - self._retransmit_at >= self._config.retransmit_ticks:
            self._retransmit_at = self._now
            self._retransmit()
        self._maybe_propose()

    def _tick_view_change(self) -> None:
        if (
            self._vc_timer_since is not None
            and self._now - self._vc_timer_since >= self._timeout(self._config.progress_timeout_ticks)
        ):
            self._start_view_change(self._vc_target + 1, "view_change_timeout")
            return
        # Resend our VIEW-CHANGE in case it was lost, but only while there is work: a
        # replica alone in a view change it no longer needs stays quiet. The interval
        # grows like the timeouts so a lone replica does not flood its peers.
        if (
            self._own_view_change_wire is not None
            and (self._has_work or self._stalled)
            and self._now - self._retransmit_at >= self._timeout(self._config.retransmit_ticks)
        ):
            self._retransmit_at = self._now
            self._broadcast(self._own_view_change_wire)
            self._count("retransmits")

    def _retransmit(self) -> None:
        """Resend own messages for the current (view, height); receivers drop exact duplicates cheaply."""
        round_ = self._round
        view = self._view
        if self._quorum.primary(view) == self._me and self._new_view_wire is not None and (
            self._view_start_height == round_.height
        ):
            self._broadcast(self._new_view_wire)
        else:
            preprepare = round_.preprepares.get(view)
            if preprepare is not None and preprepare.signer == self._me:
                block = round_.blocks.get((preprepare.block_hash, preprepare.payload_hash))
                if block is not None and block.payload is not None:
                    self._broadcast(encode_preprepare(preprepare, block.payload))
        for kind in (KIND_PREPARE, KIND_COMMIT):
            wire = round_.own_wires.get((kind, view))
            if wire is not None:
                self._broadcast(wire)
        self._count("retransmits")

    # ------------------------------------------------------------------------------
    # Restart.

    def _restore(self, wal: list[tuple[bytes, bytes]], committed_certificate: dict | None) -> None:
        """Rebuild view, own votes and prepared state from the WAL; queue restart actions."""
        records = self._read_wal(wal)
        height = self._height
        certificate = records["cert"]
        if committed_certificate is not None:
            try:
                raw = dict(committed_certificate)
                raw["sigs"] = [list(entry) for entry in raw.get("sigs", ())]
                given = parse_certificate(raw, self._limits)
            except (MessageError, TypeError, ValueError) as exc:
                raise ValueError(f"committed_certificate is malformed: {exc}") from None
            if given.height == height and given.block_hash == self._committed_hash:
                self._certificate = given
        if certificate is not None and certificate.height == height and certificate.block_hash == self._committed_hash:
            self._certificate = certificate
        elif certificate is not None and certificate.height == height + 1:
            self._round.certificate = certificate  # committed before the crash, not yet stored
        if height > 0 and self._certificate is None:
            self._alarm(f"no certificate for committed height {height}: VIEW-CHANGEs impossible until the next commit")
        view = records["view"]
        for kind, vote_height, vote_view in records["votes"]:
            if vote_height == height + 1:
                view = max(view, vote_view)
        own_view_change: ViewChange | None = records["vc"]
        own_new_view: NewView | None = records["nv"]
        if own_new_view is not None:
            view = max(view, own_new_view.view)
            self._new_view_sent = own_new_view.view
        self._view = view
        if view == records["view"]:
            self._view_start_height = max(records["start"], self._view_start_height)
        self._restore_round(records)
        if own_view_change is not None and own_view_change.view > view:
            prepared = own_view_change.prepared
            payload = self._held_payload(prepared.block_hash, prepared.payload_hash) if prepared else None
            self._mode = VIEW_CHANGE
            self._vc_target = own_view_change.view
            self._own_view_change_wire = encode_view_change(own_view_change, payload)
            self._view_changes[self._me] = replace(own_view_change, payload=payload)
        if own_new_view is not None and own_new_view.view == view:
            plan = plan_new_view(own_new_view.view_changes)
            carried = plan.carried
            payload = self._held_payload(carried.block_hash, carried.payload_hash) if carried else None
            self._new_view_wire = encode_new_view(own_new_view, payload)
            self._view_start_height = plan.start_height + 1
            if carried is not None and plan.start_height == height:
                # Its re-pre-prepare is our vote for (view, h+1), whatever else the WAL holds.
                self._own_votes[(KIND_PREPREPARE, height + 1, view)] = (carried.block_hash, carried.payload_hash)
        if self._view_start_height > height + 1:
            # We entered this view below its start height and crashed before catching up:
            # the blocks up to it are certified elsewhere, fetch them.
            self._behind_since = self._now
        if height > 0:
            self._emit(Forget(height))
        for block in list(self._round.blocks.values()):
            self._request_check(block, fresh=False)  # the driver re-validates what we voted for
        # Committed before the crash but not yet stored: commit once the block checks, or
        # fetch it at once if the WAL does not hold it.
        self._check_committed(urgent=True)
        self._resend_after_restart()

    def _read_wal(self, wal: list[tuple[bytes, bytes]]) -> dict:
        records = {"view": 0, "start": 1, "vc": None, "nv": None, "cert": None, "votes": [], "height": []}
        chain_id, limits = self._config.chain_id, self._limits
        for key, value in wal:
            record = wal_records.unseal(key, value)
            try:
                if key == wal_records.VIEW_KEY:
                    start, view = _exact_keys(codec.decode(record), ("start", "view"))
                    if type(view) is not int or view < 0 or type(start) is not int or start < 1:
                        raise ValueError("view record is not {start, view} of non-negative ints")
                    records["view"], records["start"] = view, start
                elif key == wal_records.VIEW_CHANGE_KEY:
                    records["vc"] = self._own_message(decode_message(record, chain_id, limits), ViewChange)
                elif key == wal_records.NEW_VIEW_KEY:
                    records["nv"] = self._own_message(decode_message(record, chain_id, limits), NewView)
                elif key == wal_records.CERTIFICATE_KEY:
                    records["cert"] = parse_certificate(codec.decode(record), limits)
                elif key.startswith(wal_records.GLOBAL_PREFIX):
                    raise ValueError("unknown record")
                else:
                    height, kind, detail = wal_records.parse_key(key)
                    if height > self._height:
                        records["height"].append((height, kind, detail, record))
                        if kind in (wal_records.KIND_PREPREPARE, wal_records.KIND_PREPARE, wal_records.KIND_COMMIT):
                            records["votes"].append((kind, height, detail))
            except (MessageError, codec.CodecError, ValueError, TypeError) as exc:
                raise ValueError(f"WAL record {key.hex()} is unreadable: {exc}") from None
        return records

    def _own_message(self, message, kind):
        if type(message) is not kind or message.signer != self._me:
            raise ValueError(f"not this replica's own {kind.__name__}")
        self._remember_own(message.signed, message.kind)
        return message

    def _restore_round(self, records: dict) -> None:
        """Own votes for heights above ours become signing guards; those for h+1 become state."""
        round_ = self._round
        chain_id, limits = self._config.chain_id, self._limits
        preprepares: dict[int, PrePrepare] = {}
        for height, kind, detail, record in sorted(records["height"], key=lambda item: item[:2]):
            if kind == wal_records.KIND_BLOCK:
                header, payload = _exact_list(codec.decode(record), 2)
                if type(header) is not bytes or type(payload) is not bytes:
                    raise ValueError("block record is not [header, payload]")
                if height == round_.height:
                    block_hash = codec.sha256(header)
                    if block_hash != detail:
                        raise ValueError(f"WAL block record at height {height} does not match its key")
                    block = self._register_block(block_hash, codec.sha256(payload), header, payload)
                    round_.persisted_blocks.add(block.key)
            elif kind == wal_records.KIND_PREPREPARE:
                signer, body, signature, header = _exact_list(codec.decode(record), 4)
                preprepare = decode_preprepare_parts(Signed(signer, body, signature), header, None, chain_id, limits)
                if preprepare.view != detail or preprepare.height != height:
                    raise ValueError("pre-prepare record does not match its key")
                if preprepare.signer == self._me:
                    self._remember_own(preprepare.signed, KIND_PREPREPARE)
                    self._own_votes[(KIND_PREPREPARE, height, detail)] = (preprepare.block_hash, preprepare.payload_hash)
                if height == round_.height:
                    preprepares[detail] = preprepare
                    round_.persisted_preprepares.add(detail)
            elif kind in (wal_records.KIND_PREPARE, wal_records.KIND_COMMIT):
                expected = Prepare if kind == wal_records.KIND_PREPARE else Commit
                vote = self._own_message(decode_message(record, chain_id, limits), expected)
                if vote.view != detail or vote.height != height:
                    raise ValueError("vote record does not match its key")
                digest = (vote.block_hash, vote.payload_hash) if type(vote) is Prepare else vote.block_hash
                self._own_votes[(vote.kind, height, detail)] = digest
                if height == round_.height:
                    round_.own_wires[(vote.kind, detail)] = record
                    if type(vote) is Prepare:
                        round_.prepare_sent.add(detail)
                        self._add_prepare(vote)
                    else:
                        round_.commit_sent.add(detail)
                        round_.commits.setdefault(vote.view, {})[vote.signer] = vote
                        key = (vote.view, vote.block_hash)
                        round_.commit_counts[key] = round_.commit_counts.get(key, 0) + 1
            elif kind == wal_records.KIND_PREPARED and height == round_.height:
                round_.prepared = parse_prepared(codec.decode(record), chain_id, limits)
        round_.preprepares.update(preprepares)

    def _resend_after_restart(self) -> None:
        """Resend own stored messages verbatim: peers may have missed them before the crash."""
        round_ = self._round
        if self._mode == VIEW_CHANGE:
            self._broadcast(self._own_view_change_wire)
            return
        view = self._view
        if self._new_view_wire is not None and self._view_start_height == round_.height:
            self._broadcast(self._new_view_wire)
        else:
            preprepare = round_.preprepares.get(view)
            if preprepare is not None and preprepare.signer == self._me:
                payload = self._held_payload(preprepare.block_hash, preprepare.payload_hash)
                if payload is not None:
                    self._broadcast(encode_preprepare(preprepare, payload))
        for kind in (KIND_PREPARE, KIND_COMMIT):
            wire = round_.own_wires.get((kind, view))
            if wire is not None:
                self._broadcast(wire)


def _exact_keys(obj, keys: tuple[str, ...]) -> tuple:
    if type(obj) is not dict or set(obj) != set(keys):
        raise ValueError(f"record must hold exactly {keys}")
    return tuple(obj[key] for key in keys)


def _exact_list(obj, length: int) -> list:
    if type(obj) is not list or len(obj) != length:
        raise ValueError(f"record must be a list of {length}")
    return obj
