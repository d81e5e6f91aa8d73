"""Invariants the simulator checks after every step of every honest replica.

Safety (PBFT-NOTES section 6): one committed block per height across honest replicas,
committed blocks never change, every committed block links to its parent and carries a
valid certificate (>= q distinct valid commit votes for that view and hash, checked
with crypto.verify), each digest maps to one header; no honest replica signs two
different digests for one (kind, view, height) or two VIEW-CHANGEs for one target view,
even across crashes; every own vote is in the WAL before it is sent; views and heights
never decrease; in-memory logs stay bounded; honest replicas raise no Alarm.

Lock (OSDI 4.5.1): once a block B is committed at height h in view v, every honest
COMMIT at h in a view >= v and every honest PRE-PREPARE or PREPARE at h in a view > v
(fresh or carried by a NEW-VIEW) names B, whenever it was sent.
"""
from __future__ import annotations

from ledger import codec
from ledger.crypto import COMMIT_TAG

from consensus import wal as wal_records
from consensus.actions import Broadcast, CommitBlock, Send
from consensus.messages import (
    Commit,
    Limits,
    NewView,
    PrePrepare,
    Prepare,
    ViewChange,
    commit_vote_bytes,
    decode_message,
)


class InvariantViolation(AssertionError):
    """A safety or liveness property of the protocol does not hold."""


class Checker:
    def __init__(self, chain_id: str, validators: tuple[bytes, ...], verify, log_size_max: int):
        self.chain_id = chain_id
        self.validators = validators
        self.q = (2 * len(validators)) // 3 + 1
        self.verify = verify
        self.limits = Limits(validators_max=len(validators))
        self.log_size_max = log_size_max
        self.committed: dict[int, bytes] = {}  # height -> block hash, over all honest replicas
        self.headers: dict[bytes, bytes] = {}  # block hash -> header
        self.signed: dict[tuple, object] = {}  # (kind, signer, view, height) -> digest
        self.certificates_checked: set[tuple] = set()
        self.committed_view: dict[int, int] = {}  # height -> lowest certificate view seen
        self.votes: dict[int, list[tuple[str, int, bytes, str]]] = {}  # height -> honest (kind, view, block, node)

    def fail(self, message: str) -> None:
        raise InvariantViolation(message)

    # -- commits -----------------------------------------------------------------------

    def certificate_ok(self, height: int, block_hash: bytes, certificate: dict) -> bool:
        if certificate.get("height") != height or certificate.get("block_hash") != block_hash:
            return False
        sigs = certificate.get("sigs", [])
        fingerprint = (height, block_hash, certificate.get("view"), tuple(tuple(entry) for entry in sigs))
        if fingerprint in self.certificates_checked:
            return True
        message = commit_vote_bytes(self.chain_id, height, certificate["view"], block_hash)
        signers = [entry[0] for entry in sigs]
        if len(set(signers)) != len(signers) or len(signers) < self.q:
            return False
        for key, signature in sigs:
            if key not in self.validators or not self.verify(key, COMMIT_TAG, message, signature):
                return False
        self.certificates_checked.add(fingerprint)
        return True

    def on_committed(self, node_name: str, height: int, header: bytes, certificate: dict, parent_hash: bytes) -> None:
        """A block that an honest node's store now holds (by CommitBlock or catch-up)."""
        block_hash = codec.sha256(header)
        if not self.certificate_ok(height, block_hash, certificate):
            self.fail(f"{node_name}: block {height} has no valid certificate")
        if codec.decode(header)["prev"] != parent_hash:
            self.fail(f"{node_name}: block {height} does not link to its parent")
        known = self.committed.setdefault(height, block_hash)
        if known != block_hash:
            self.fail(f"{node_name}: fork at height {height}: {known.hex()[:16]} vs {block_hash.hex()[:16]}")
        known_header = self.headers.setdefault(block_hash, header)
        if known_header != header:
            self.fail(f"{node_name}: digest {block_hash.hex()[:16]} maps to two headers")
        view = certificate["view"]
        if view < self.committed_view.get(height, view + 1):
            self.committed_view[height] = view
            for kind, vote_view, vote_block, voter in self.votes.get(height, ()):
                self._check_lock(voter, kind, height, vote_view, vote_block)

    def _check_lock(self, node_name: str, kind: str, height: int, view: int, block_hash: bytes) -> None:
        committed_view = self.committed_view.get(height)
        if committed_view is None:
            return
        bound = view >= committed_view if kind == "commit" else view > committed_view
        if bound and block_hash != self.committed[height]:
            self.fail(
                f"{node_name}: {kind} for another block at height {height} view {view}, "
                f"after a commit there in view {committed_view}"
            )

    # -- steps -------------------------------------------------------------------------

    def after_step(self, node, actions: list, check_log_size: bool) -> None:
        replica = node.replica
        if replica.view < node.view_seen:
            self.fail(f"{node.name}: view went down {node.view_seen} -> {replica.view}")
        if replica.height < node.height_seen:
            self.fail(f"{node.name}: height went down {node.height_seen} -> {replica.height}")
        node.view_seen = replica.view
        node.height_seen = replica.height
        if check_log_size and replica.log_size > self.log_size_max:
            self.fail(f"{node.name}: log size {replica.log_size} above {self.log_size_max}")

    def before_action(self, node, action) -> None:
        """Called for each action of an honest replica just before the simulator performs it."""
        kind = type(action)
        if kind is Broadcast or kind is Send:
            self._check_outgoing(node, action.data)
        elif kind is CommitBlock:
            if action.height != node.ledger.height + 1:
                self.fail(f"{node.name}: CommitBlock {action.height} on top of {node.ledger.height}")

    def _check_outgoing(self, node, data: bytes) -> None:
        message = decode_message(data, self.chain_id, self.limits)
        kind = type(message)
        if kind not in (PrePrepare, Prepare, Commit, ViewChange, NewView):
            return
        if message.signer != node.key.public_key:
            return  # a NEW-VIEW forwarded as help carries the primary's signature
        if kind is ViewChange or kind is NewView:
            key = (message.kind, message.signer, message.view)
            digest = message.signed.body
            record_key = wal_records.VIEW_CHANGE_KEY if kind is ViewChange else wal_records.NEW_VIEW_KEY
            self._require_persisted(node, record_key, lambda record: message.signed.body in record)
        else:
            key = (message.kind, message.signer, message.view, message.height)
            digest = (message.block_hash, getattr(message, "payload_hash", None))
            record_kind = {
                PrePrepare: wal_records.KIND_PREPREPARE, Prepare: wal_records.KIND_PREPARE, Commit: wal_records.KIND_COMMIT,
            }[kind]
            record_key = wal_records.vote_key(message.height, record_kind, message.view)
            if node.ledger.height < message.height:  # a vote for a height not yet committed here
                self._require_persisted(node, record_key, lambda record: message.signed.signature in record)
        self._record_signed(node, key, digest, message.kind)
        if kind is NewView and message.preprepare is not None:
            # The re-pre-prepare inside a NEW-VIEW is a PRE-PREPARE vote like any other.
            carried = message.preprepare
            self._record_signed(
                node, (carried.kind, carried.signer, carried.view, carried.height),
                (carried.block_hash, carried.payload_hash), carried.kind,
            )

    def _record_signed(self, node, key: tuple, digest, kind: str) -> None:
        known = self.signed.setdefault(key, digest)
        if known != digest:
            self.fail(f"{node.name}: signed two different {kind} for {key[2:]}")
        if len(key) == 4 and known is digest:  # a first PRE-PREPARE, PREPARE or COMMIT for (view, height)
            view, height, block_hash = key[2], key[3], digest[0]
            self.votes.setdefault(height, []).append((kind, view, block_hash, node.name))
            self._check_lock(node.name, kind, height, view, block_hash)

    def _require_persisted(self, node, key: bytes, matches) -> None:
        value = node.wal.get(key)
        if value is None or not matches(value):
            self.fail(f"{node.name}: sent a message before persisting its WAL record {key.hex()}")
