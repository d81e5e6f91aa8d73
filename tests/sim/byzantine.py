"""Byzantine behaviours: a real replica whose output is tampered with, plus injected messages.

A Byzantine node runs the production Replica with its own key (so it knows the current
view and height and takes part when it pleases) and the simulator passes its outgoing
messages through `Byzantine.outgoing`, which may rewrite, split or withhold them.
`Byzantine.inject` adds messages of its own every tick. Each behaviour counts in the
simulation's fault counter when it actually does something, so a run can assert that
every enabled behaviour fired.

Behaviours (KINDS):
    equivocate        as primary, send two different valid blocks to two halves of the backups
    bad_payload       as primary, propose a block whose payload breaks the ledger rules
    swap_payload      as primary, send one backup the real header with another payload (votes
                      name the header only, so that backup sees the certified block as invalid)
    censor            as primary, propose only empty blocks (the mempool's txs never commit)
    conflicting_votes send some peers PREPARE/COMMIT for a random digest instead, and more such votes
    withhold          drop each outgoing message with probability 1/2
    forge             messages with a broken signature, or claiming another validator as signer
    stale_view        votes for views/heights already left behind
    future_view       votes and VIEW-CHANGEs for views far ahead
    garbage           random bytes, truncated messages, wrong-shaped msgpack
    bad_view_change   VIEW-CHANGEs with forged prepared certificates or forged certificates
"""
from __future__ import annotations

import random
from collections import Counter

from ledger import codec
from ledger.crypto import KeyPair

from consensus.messages import (
    KIND_COMMIT,
    KIND_PREPARE,
    Certificate,
    Limits,
    MessageError,
    PrePrepare,
    Prepare,
    PreparedCertificate,
    Signed,
    decode_message,
    encode_preprepare,
    encode_view_change,
    encode_vote,
    parse_header,
    sign_commit,
    sign_prepare,
    sign_preprepare,
    sign_view_change,
)

from .ledger_app import PAYLOAD_PREFIX, FakeLedger

PRIMARY_KINDS = ("equivocate", "bad_payload", "censor", "swap_payload")
KINDS = PRIMARY_KINDS + (
    "conflicting_votes", "withhold", "forge", "stale_view", "future_view", "garbage", "bad_view_change",
)
INJECT_PROBABILITY = 0.08


class Byzantine:
    def __init__(self, kinds: frozenset[str], rng: random.Random, key: KeyPair, chain_id: str,
                 validators: tuple[bytes, ...], faults: Counter):
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown Byzantine behaviours {sorted(unknown)}")
        self.kinds = kinds
        self.rng = rng
        self.key = key
        self.chain_id = chain_id
        self.validators = validators
        self.faults = faults
        self.limits = Limits(validators_max=len(validators))
        self.recent: list[bytes] = []  # own recent messages, raw material for forgeries

    def _fired(self, kind: str) -> None:
        self.faults["byzantine." + kind] += 1

    def _others(self) -> list[int]:
        me = self.validators.index(self.key.public_key)
        return [index for index in range(len(self.validators)) if index != me]

    def payload_for_proposal(self, default: bytes) -> bytes:
        if "censor" in self.kinds:
            self._fired("censor")
            return PAYLOAD_PREFIX
        return default

    # -- rewriting own output ----------------------------------------------------------

    def outgoing(self, targets: list[int], data: bytes, ledger: FakeLedger, now_ms: int) -> list[tuple[int, bytes]]:
        """The (target, data) pairs actually sent for one Broadcast/Send of the real replica."""
        self.recent = (self.recent + [data])[-8:]
        try:
            message = decode_message(data, self.chain_id, self.limits)
        except MessageError:
            message = None
        sends = [(target, data) for target in targets]
        if type(message) is PrePrepare and len(targets) > 1:
            sends = self._misbehave_as_primary(message, targets, ledger, now_ms) or sends
        elif message is not None and message.kind in (KIND_PREPARE, KIND_COMMIT):
            if "conflicting_votes" in self.kinds and len(targets) > 1:
                victim = self.rng.choice(targets)
                sends = [(t, d) if t != victim else (t, self._conflicting_vote(message)) for t, d in sends]
                self._fired("conflicting_votes")
        if "withhold" in self.kinds:
            kept = [(t, d) for t, d in sends if self.rng.random() < 0.5]
            if len(kept) < len(sends):
                self._fired("withhold")
            sends = kept
        return sends

    def _misbehave_as_primary(self, preprepare: PrePrepare, targets, ledger: FakeLedger, now_ms: int):
        header = parse_header(preprepare.header)
        if header.view != preprepare.view or ledger.height + 1 != preprepare.height:
            return None  # not a fresh proposal on our own head
        if "equivocate" in self.kinds:
            other_payload = PAYLOAD_PREFIX + self.rng.randbytes(12)
            other = self._sign_block(ledger, preprepare, other_payload, now_ms)
            half = set(self.rng.sample(targets, len(targets) // 2))
            self._fired("equivocate")
            return [(t, other if t in half else encode_preprepare(preprepare, preprepare.payload)) for t in targets]
        if "bad_payload" in self.kinds:
            bad = self._sign_block(ledger, preprepare, b"bad:" + self.rng.randbytes(12), now_ms)
            self._fired("bad_payload")
            return [(t, bad) for t in targets]
        if "swap_payload" in self.kinds:
            other_payload = PAYLOAD_PREFIX + self.rng.randbytes(12)
            swapped = sign_preprepare(
                self.key, self.chain_id, preprepare.view, preprepare.height, preprepare.header, other_payload,
                preprepare.block_hash, codec.sha256(other_payload),
            )
            victim = self.rng.choice(targets)
            self._fired("swap_payload")
            return [(t, encode_preprepare(swapped, other_payload) if t == victim
                     else encode_preprepare(preprepare, preprepare.payload)) for t in targets]
        return None

    def _sign_block(self, ledger: FakeLedger, preprepare: PrePrepare, payload: bytes, now_ms: int) -> bytes:
        header = ledger.build(preprepare.view, self.key.public_key, now_ms, payload)
        signed = sign_preprepare(
            self.key, self.chain_id, preprepare.view, preprepare.height, header, payload,
            codec.sha256(header), codec.sha256(payload),
        )
        return encode_preprepare(signed, payload)

    def _conflicting_vote(self, vote) -> bytes:
        digest = self.rng.randbytes(32)
        if type(vote) is Prepare:
            return encode_vote(sign_prepare(self.key, self.chain_id, vote.view, vote.height, digest, self.rng.randbytes(32)))
        return encode_vote(sign_commit(self.key, self.chain_id, vote.view, vote.height, digest))

    # -- injected messages -------------------------------------------------------------

    def inject(self, view: int, height: int, certificate: dict | None) -> list[tuple[int, bytes]]:
        """Messages to send this tick beyond what the real replica sends."""
        out = []
        for kind in ("conflicting_votes", "forge", "stale_view", "future_view", "garbage", "bad_view_change"):
            if kind in self.kinds and self.rng.random() < INJECT_PROBABILITY:
                data = getattr(self, "_make_" + kind)(view, height, certificate)
                if data is not None:
                    self._fired(kind)
                    out.append((self.rng.choice(self._others()), data))
        return out

    def _vote(self, view: int, height: int) -> bytes:
        if self.rng.random() < 0.5:
            vote = sign_prepare(self.key, self.chain_id, view, height, self.rng.randbytes(32), self.rng.randbytes(32))
        else:
            vote = sign_commit(self.key, self.chain_id, view, height, self.rng.randbytes(32))
        return encode_vote(vote)

    def _make_conflicting_votes(self, view: int, height: int, certificate) -> bytes:
        """A vote for a random digest at the current view and height (also when the real
        replica sits out a view and has no vote of its own to rewrite)."""
        return self._vote(view, height + 1)

    def _make_forge(self, view: int, height: int, certificate) -> bytes:
        vote = sign_prepare(self.key, self.chain_id, view, height + 1, self.rng.randbytes(32), self.rng.randbytes(32))
        if self.rng.random() < 0.5:
            broken = bytearray(vote.signed.signature)
            broken[self.rng.randrange(64)] ^= 1 << self.rng.randrange(8)
            signed = Signed(vote.signed.signer, vote.signed.body, bytes(broken))
        else:
            impostor = self.rng.choice([key for key in self.validators if key != self.key.public_key])
            signed = Signed(impostor, vote.signed.body, vote.signed.signature)
        return encode_vote(Prepare(signed, vote.view, vote.height, vote.block_hash, vote.payload_hash))

    def _make_stale_view(self, view: int, height: int, certificate) -> bytes:
        if view > 0:
            return self._vote(self.rng.randrange(view), height + 1)
        return self._vote(0, max(1, height))  # view 0: a stale height instead

    def _make_future_view(self, view: int, height: int, certificate) -> bytes:
        ahead = view + self.rng.randint(1, 200)
        if self.rng.random() < 0.5:
            return self._vote(ahead, height + 1)
        cert = None if certificate is None else _certificate(certificate)
        if height > 0 and cert is None:
            return self._vote(ahead, height + 1)
        return encode_view_change(sign_view_change(self.key, self.chain_id, ahead, height, cert, None), None)

    def _make_garbage(self, view: int, height: int, certificate) -> bytes:
        choice = self.rng.randrange(4)
        if choice == 0:
            return self.rng.randbytes(self.rng.randint(0, 64))
        if choice == 1 and self.recent:
            message = self.rng.choice(self.recent)
            return message[: self.rng.randrange(max(1, len(message)))]
        if choice == 2:
            return codec.encode(["prepare", self.key.public_key, b"\x80", self.rng.randbytes(64)])
        return codec.encode({"kind": "commit", "view": view, "height": height + 1})

    def _make_bad_view_change(self, view: int, height: int, certificate) -> bytes:
        """A VIEW-CHANGE for the next view whose certificates are forged."""
        target = view + 1
        header = codec.encode({
            "chain": self.chain_id, "height": height + 1, "prev": b"\0" * 32, "time": 1, "proposer": self.validators[0],
            "view": 0, "tx_count": 0, "tx_root": b"\0" * 32, "results_root": b"\0" * 32, "state_root": b"\0" * 32,
        })
        block_hash, payload_hash = codec.sha256(header), self.rng.randbytes(32)
        primary = self.validators[0]
        forged_pp = sign_preprepare(self.key, self.chain_id, 0, height + 1, header, None, block_hash, payload_hash)
        forged_pp = PrePrepare(Signed(primary, forged_pp.signed.body, forged_pp.signed.signature), 0, height + 1,
                               block_hash, payload_hash, header, None)
        prepares = tuple(
            Prepare(Signed(key, forged_pp.signed.body, self.rng.randbytes(64)), 0, height + 1, block_hash, payload_hash)
            for key in self.validators[1:]
        )
        prepared = PreparedCertificate(forged_pp, prepares)
        if self.rng.random() < 0.5 or certificate is None:
            fake_height = height + self.rng.randint(1, 50)
            cert = Certificate(fake_height, view, self.rng.randbytes(32),
                               tuple((key, self.rng.randbytes(64)) for key in self.validators))
            return encode_view_change(sign_view_change(self.key, self.chain_id, target, fake_height, cert, None), None)
        return encode_view_change(
            sign_view_change(self.key, self.chain_id, target, height, _certificate(certificate), prepared), None
        )


def _certificate(raw: dict) -> Certificate:
    return Certificate(raw["height"], raw["view"], raw["block_hash"], tuple((key, sig) for key, sig in raw["sigs"]))
