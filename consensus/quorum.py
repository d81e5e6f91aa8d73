"""Quorum arithmetic and certificate checks: pure functions over parsed messages.

n validators in genesis order, f = (n-1)//3 faults tolerated, quorum q = (2n)//3 + 1
(the contract's rule; 2f+1 when n = 3f+1 and the only safe choice otherwise: any two
quorums share more than f validators, so at least one honest one).

`SignatureChecker` verifies each signature once: it remembers every valid
(signer, signature) with the bytes it signs, so a vote that reaches a replica again
inside a certificate, a VIEW-CHANGE or a NEW-VIEW costs a dictionary lookup.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from ledger import codec
from ledger.crypto import COMMIT_TAG

from consensus.messages import (
    NEW_VIEW_TAG,
    PREPARE_TAG,
    PREPREPARE_TAG,
    VIEW_CHANGE_TAG,
    Certificate,
    MessageError,
    NewView,
    PreparedCertificate,
    ViewChange,
    commit_vote_bytes,
    parse_header,
)

VerifyFunction = Callable[[bytes, bytes, bytes, bytes], bool]


class Quorum:
    """The validator set of one chain: membership, primaries and thresholds."""

    def __init__(self, validators: tuple[bytes, ...]):
        if not validators:
            raise ValueError("a chain needs at least one validator")
        if len(set(validators)) != len(validators):
            raise ValueError("validators must be distinct")
        if any(type(key) is not bytes or len(key) != 32 for key in validators):
            raise ValueError("a validator is a 32-byte Ed25519 public key")
        self.validators = tuple(validators)
        self.n = len(validators)
        self.f = (self.n - 1) // 3
        self.q = (2 * self.n) // 3 + 1
        self.index = {key: position for position, key in enumerate(validators)}

    def primary(self, view: int) -> bytes:
        return self.validators[view % self.n]

    def is_validator(self, key: bytes) -> bool:
        return key in self.index

    def ordered(self, keys) -> list[bytes]:
        """Validator keys in genesis order (deterministic output never depends on set order)."""
        return sorted(keys, key=self.index.__getitem__)


class SignatureChecker:
    """Ed25519 verification with a bounded memory of signatures already found valid."""

    def __init__(self, verify: VerifyFunction, capacity: int):
        self._verify = verify
        self._capacity = capacity
        self._valid: OrderedDict[tuple[bytes, bytes], tuple[bytes, bytes]] = OrderedDict()
        self.verifications = 0  # real verify calls, for metrics and tests

    def check(self, signer: bytes, tag: bytes, message: bytes, signature: bytes) -> bool:
        key = (signer, signature)
        known = self._valid.get(key)
        if known is not None and known[0] == tag and known[1] == message:
            self._valid.move_to_end(key)
            return True
        self.verifications += 1
        if not self._verify(signer, tag, message, signature):
            return False
        self.remember(signer, tag, message, signature)
        return True

    def remember(self, signer: bytes, tag: bytes, message: bytes, signature: bytes) -> None:
        """Record a signature known to be valid (one this replica made, or just verified)."""
        self._valid[(signer, signature)] = (tag, message)
        self._valid.move_to_end((signer, signature))
        while len(self._valid) > self._capacity:
            self._valid.popitem(last=False)


def certificate_is_valid(certificate: Certificate, chain_id: str, quorum: Quorum, checker: SignatureChecker) -> bool:
    """At least q votes, every one a valid commit vote of a distinct validator (contract section 4)."""
    if len(certificate.votes) < quorum.q:
        return False
    message = commit_vote_bytes(chain_id, certificate.height, certificate.view, certificate.block_hash)
    seen = set()
    for key, signature in certificate.votes:
        if not quorum.is_validator(key) or key in seen:
            return False
        seen.add(key)
        if not checker.check(key, COMMIT_TAG, message, signature):
            return False
    return True


def prepared_is_valid(prepared: PreparedCertificate, quorum: Quorum, checker: SignatureChecker) -> bool:
    """The primary's PRE-PREPARE plus q-1 matching PREPAREs from distinct other validators.

    The primary never sends a PREPARE (its PRE-PREPARE is its vote), so q distinct
    validators stand behind the digest. The header must hash to the digest and be for
    the certificate's height.
    """
    preprepare = prepared.preprepare
    primary = quorum.primary(preprepare.view)
    if preprepare.signer != primary or codec.sha256(preprepare.header) != preprepare.block_hash:
        return False
    try:
        header = parse_header(preprepare.header)
    except MessageError:
        return False
    if header.height != preprepare.height:
        return False
    if len(prepared.prepares) < quorum.q - 1:
        return False
    seen = set()
    for prepare in prepared.prepares:
        if (
            prepare.signer == primary
            or not quorum.is_validator(prepare.signer)
            or prepare.signer in seen
            or prepare.view != preprepare.view
            or prepare.height != preprepare.height
            or prepare.block_hash != preprepare.block_hash
            or prepare.payload_hash != preprepare.payload_hash
        ):
            return False
        seen.add(prepare.signer)
    signed = preprepare.signed
    if not checker.check(signed.signer, PREPREPARE_TAG, signed.body, signed.signature):
        return False
    return all(
        checker.check(prepare.signer, PREPARE_TAG, prepare.signed.body, prepare.signed.signature)
        for prepare in prepared.prepares
    )


def view_change_is_valid(view_change: ViewChange, chain_id: str, quorum: Quorum, checker: SignatureChecker) -> bool:
    """Signature, then each certificate on its own: C for the committed height, P for the next."""
    signed = view_change.signed
    if not quorum.is_validator(signed.signer) or view_change.view == 0:
        return False
    certificate = view_change.certificate
    if (certificate is None) != (view_change.height == 0):
        return False
    if certificate is not None and certificate.height != view_change.height:
        return False
    prepared = view_change.prepared
    if prepared is not None and (prepared.height != view_change.height + 1 or prepared.view >= view_change.view):
        return False
    if not checker.check(signed.signer, VIEW_CHANGE_TAG, signed.body, signed.signature):
        return False
    if certificate is not None and not certificate_is_valid(certificate, chain_id, quorum, checker):
        return False
    return prepared is None or prepared_is_valid(prepared, quorum, checker)


def new_view_signature_is_valid(new_view: NewView, checker: SignatureChecker) -> bool:
    signed = new_view.signed
    return checker.check(signed.signer, NEW_VIEW_TAG, signed.body, signed.signature)


@dataclass(frozen=True, slots=True)
class NewViewPlan:
    """What a NEW-VIEW built from a set of VIEW-CHANGEs must say.

    start_height (h*) is the highest certified committed height among them; carried is
    the prepared certificate for h*+1 from the highest view, or None when no sender
    prepared anything at h*+1 (then nothing can have committed there and the new
    primary proposes a fresh block).
    """

    start_height: int
    certificate: Certificate | None
    carried: PreparedCertificate | None


def plan_new_view(view_changes) -> NewViewPlan:
    """Compute (h*, O) from already-validated VIEW-CHANGEs; deterministic in their content."""
    top = max(view_changes, key=lambda vc: vc.height)
    start_height = top.height
    carried = None
    for view_change in view_changes:
        prepared = view_change.prepared
        if view_change.height != start_height or prepared is None:
            continue
        # With at most f faulty validators two certificates of one view name the same
        # block; the digest tie-break only keeps the choice deterministic regardless.
        rank = (prepared.view, prepared.block_hash, prepared.payload_hash)
        if carried is None or rank > (carried.view, carried.block_hash, carried.payload_hash):
            carried = prepared
    return NewViewPlan(start_height, top.certificate, carried)
