"""Consensus wire messages: signed canonical bodies inside canonical msgpack envelopes.

Every message on the wire is one canonical msgpack array, its *envelope*:

    ["pp",      signer, body, sig, header, payload]   PRE-PREPARE, the block attached
    ["prepare", signer, body, sig]                    PREPARE
    ["commit",  signer, body, sig]                    COMMIT (the contract's commit vote)
    ["vc",      signer, body, sig, payload | nil]     VIEW-CHANGE, its prepared block attached
    ["nv",      signer, body, sig, payload | nil]     NEW-VIEW, the carried block attached
    ["cert",    certificate]                          a commit certificate (needs no signer)

`sig` is Ed25519 over `tag + body` with the kind's purpose tag (`TAGS`); `body` is the
canonical msgpack the signer built itself. Attachments (header, payload) are not signed:
the body names them by hash (`block` = SHA256(header) = block_hash, `payload` =
SHA256(payload)), so anybody can check an attachment by hashing it. A commit body is
exactly the contract's `canonical([chain, height, view, block_hash])` so commit messages
are the certificate's votes.

Decoding never trusts its input: `decode_message` checks size, canonical form, shape,
every field's type and length and the chain id, and raises `MessageError(reason)` for
anything else. It never verifies signatures; the replica does that (once per message).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Union

import msgpack

from ledger import codec
from ledger.block import Header, decode_header
from ledger.crypto import COMMIT_TAG, KeyPair

PREPREPARE_TAG = b"ledger/preprepare/v1"
PREPARE_TAG = b"ledger/prepare/v1"
VIEW_CHANGE_TAG = b"ledger/viewchange/v1"
NEW_VIEW_TAG = b"ledger/newview/v1"

KIND_PREPREPARE = "pp"
KIND_PREPARE = "prepare"
KIND_COMMIT = "commit"
KIND_VIEW_CHANGE = "vc"
KIND_NEW_VIEW = "nv"
KIND_CERTIFICATE = "cert"

TAGS = {
    KIND_PREPREPARE: PREPREPARE_TAG,
    KIND_PREPARE: PREPARE_TAG,
    KIND_COMMIT: COMMIT_TAG,
    KIND_VIEW_CHANGE: VIEW_CHANGE_TAG,
    KIND_NEW_VIEW: NEW_VIEW_TAG,
}

KEY_BYTES = 32
SIGNATURE_BYTES = 64
HASH_BYTES = 32
NUMBER_MAX = 2**63 - 1  # heights, views and times fit a signed 64-bit integer

class MessageError(ValueError):
    """Input that is not a well-formed consensus message; `reason` names the drop counter."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Limits:
    """Size bounds for decoding; a message over any of them is dropped unread."""

    validators_max: int
    payload_bytes_max: int = 9 * 2**20  # 8 MiB of signed txs plus their msgpack framing
    header_bytes_max: int = 4096
    message_bytes_max: int = field(init=False)
    body_bytes_max: int = field(init=False)

    def __post_init__(self):
        # A NEW-VIEW holds up to n VIEW-CHANGE bodies, each with a header, a certificate
        # and a prepared certificate of up to n votes; 512 bytes per vote is generous.
        structure = self.validators_max * (2 * self.header_bytes_max + 512 * (2 * self.validators_max + 2))
        object.__setattr__(self, "body_bytes_max", self.header_bytes_max + structure + 65536)
        object.__setattr__(self, "message_bytes_max", self.payload_bytes_max + self.body_bytes_max)


@dataclass(frozen=True, slots=True)
class Signed:
    """A signature by `signer` over TAGS[kind] + body."""

    signer: bytes
    body: bytes
    signature: bytes

    def to_list(self) -> list:
        return [self.signer, self.body, self.signature]


class _SignedMessage:
    """A message with a `signed` field; its signer is the validator that sent it."""

    __slots__ = ()

    @property
    def signer(self) -> bytes:
        return self.signed.signer


@dataclass(frozen=True, slots=True)
class PrePrepare(_SignedMessage):
    kind: ClassVar[str] = KIND_PREPREPARE
    signed: Signed
    view: int
    height: int
    block_hash: bytes
    payload_hash: bytes
    header: bytes
    payload: bytes | None  # None where only the header travels (certificates, NEW-VIEW body)


@dataclass(frozen=True, slots=True)
class Prepare(_SignedMessage):
    kind: ClassVar[str] = KIND_PREPARE
    signed: Signed
    view: int
    height: int
    block_hash: bytes
    payload_hash: bytes


@dataclass(frozen=True, slots=True)
class Commit(_SignedMessage):
    kind: ClassVar[str] = KIND_COMMIT
    signed: Signed
    view: int
    height: int
    block_hash: bytes


@dataclass(frozen=True, slots=True)
class Certificate:
    """A commit certificate: votes [(validator key, commit signature)] for (height, view, block_hash)."""

    height: int
    view: int
    block_hash: bytes
    votes: tuple[tuple[bytes, bytes], ...]

    def to_dict(self) -> dict:
        """The contract's certificate: {"height", "view", "block_hash", "sigs": [[key, sig], ...]}."""
        return {
            "height": self.height,
            "view": self.view,
            "block_hash": self.block_hash,
            "sigs": [[key, sig] for key, sig in self.votes],
        }

    @property
    def signers(self) -> tuple[bytes, ...]:
        return tuple(key for key, _ in self.votes)


@dataclass(frozen=True, slots=True)
class PreparedCertificate:
    """A PRE-PREPARE (header, no payload) and q-1 matching PREPAREs from other validators."""

    preprepare: PrePrepare
    prepares: tuple[Prepare, ...]

    @property
    def view(self) -> int:
        return self.preprepare.view

    @property
    def height(self) -> int:
        return self.preprepare.height

    @property
    def block_hash(self) -> bytes:
        return self.preprepare.block_hash

    @property
    def payload_hash(self) -> bytes:
        return self.preprepare.payload_hash

    @property
    def header(self) -> bytes:
        return self.preprepare.header

    def to_obj(self) -> dict:
        return {
            "pp": self.preprepare.signed.to_list(),
            "header": self.preprepare.header,
            "prepares": [prepare.signed.to_list() for prepare in self.prepares],
        }


@dataclass(frozen=True, slots=True)
class ViewChange(_SignedMessage):
    kind: ClassVar[str] = KIND_VIEW_CHANGE
    signed: Signed
    view: int  # the view the sender wants to move to
    height: int  # the sender's committed height
    certificate: Certificate | None  # for `height`; None only at height 0
    prepared: PreparedCertificate | None  # for height + 1, from the highest view it prepared in
    payload: bytes | None  # the prepared block's payload, if attached


@dataclass(frozen=True, slots=True)
class NewView(_SignedMessage):
    kind: ClassVar[str] = KIND_NEW_VIEW
    signed: Signed
    view: int
    view_changes: tuple[ViewChange, ...]  # without payloads
    preprepare: PrePrepare | None  # the carried block re-pre-prepared in `view` (header from its certificate)
    payload: bytes | None  # the carried block's payload, if attached


@dataclass(frozen=True, slots=True)
class CertificateMessage:
    kind: ClassVar[str] = KIND_CERTIFICATE
    certificate: Certificate


Message = Union[PrePrepare, Prepare, Commit, ViewChange, NewView, CertificateMessage]


# ---------------------------------------------------------------------------------------
# Envelopes: flat arrays of str, bin and nil.


def _bin_header(length: int) -> bytes:
    if length < 256:
        return b"\xc4" + length.to_bytes(1, "big")
    if length < 65536:
        return b"\xc5" + length.to_bytes(2, "big")
    return b"\xc6" + length.to_bytes(4, "big")


def envelope_parts(items: list) -> list[bytes]:
    """The canonical msgpack of a flat list of str/bin/nil, as pieces to join.

    Large bins (payloads) stay as they are; joining the pieces copies them once.
    """
    count = len(items)
    parts = [bytes([0x90 | count]) if count < 16 else b"\xdc" + count.to_bytes(2, "big")]
    for item in items:
        if type(item) is bytes:
            parts.append(_bin_header(len(item)))
            parts.append(item)
        else:
            parts.append(msgpack.packb(item, use_bin_type=True))
    return parts


def _pack_envelope(items: list) -> bytes:
    return b"".join(envelope_parts(items))


def _canonical_length(item) -> int:
    """Length of the canonical msgpack encoding of a str, bin or nil envelope item."""
    if item is None:
        return 1
    if type(item) is bytes:
        size = len(item)
        return size + (2 if size < 256 else 3 if size < 65536 else 5)
    if type(item) is str:
        size = len(item.encode())
        return size + (1 if size < 32 else 2 if size < 256 else 3 if size < 65536 else 5)
    if type(item) is list:
        raise MessageError("bad_shape", "nested container in an envelope")
    raise MessageError("bad_shape", f"{type(item).__name__} in an envelope")


def _unpack_envelope(data: bytes, limits: Limits) -> list:
    """Decode a flat envelope and prove it canonical without re-packing its payload.

    Every non-canonical form of a str, bin, nil or array header is strictly longer than
    the canonical one, so a flat array is canonical exactly when its length equals the
    sum of its items' canonical lengths.
    """
    if len(data) > limits.message_bytes_max:
        raise MessageError("too_large", f"{len(data)} bytes")
    try:
        items = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=limits.message_bytes_max,
            max_array_len=16,
            max_map_len=0,
            max_ext_len=0,
            max_str_len=64,
        )
    except msgpack.ExtraData:
        raise MessageError("non_canonical", "bytes follow the envelope") from None
    except (ValueError, msgpack.UnpackException, TypeError, RecursionError) as exc:
        raise MessageError("bad_encoding", str(exc)) from None
    if type(items) is not list or not items:
        raise MessageError("bad_shape", "an envelope is a non-empty array")
    expected = (1 if len(items) < 16 else 3) + sum(_canonical_length(item) for item in items)
    if expected != len(data):
        raise MessageError("non_canonical", "envelope is not in its shortest form")
    return items


# ---------------------------------------------------------------------------------------
# Field checks: every value from the wire is checked for type and range before use.


def _sorted_pairs(pairs):
    # Canonical maps have str keys in strictly ascending order (code point order is
    # UTF-8 byte order), which also rules out duplicate keys.
    previous = None
    for key, _ in pairs:
        if type(key) is not str:
            raise MessageError("non_canonical", "map key is not a str")
        if previous is not None and key <= previous:
            raise MessageError("non_canonical", "map keys are not sorted or repeat")
        previous = key
    return dict(pairs)


def _decode_body(body: bytes):
    """Decode a signed body and prove it canonical.

    Same rule as ledger.codec.decode, a little cheaper: key order is checked while
    decoding, so re-packing the value must reproduce the input exactly (which rules out
    every longer form). Floats and ext types re-pack unchanged; they are refused by the
    field checks, which every body parser applies to every leaf.
    """
    try:
        value = msgpack.unpackb(
            body, raw=False, use_list=True, strict_map_key=False, object_pairs_hook=_sorted_pairs, timestamp=0
        )
    except MessageError:
        raise
    except msgpack.ExtraData:
        raise MessageError("non_canonical", "bytes follow the body") from None
    except (ValueError, msgpack.UnpackException, TypeError, RecursionError) as exc:
        raise MessageError("bad_body", str(exc)) from None
    try:
        again = msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise MessageError("non_canonical", str(exc)) from None
    if again != body:
        raise MessageError("non_canonical", "not the shortest encoding")
    return value


def _fields(obj, keys: tuple[str, ...], what: str) -> tuple:
    if type(obj) is not dict or len(obj) != len(keys) or any(key not in obj for key in keys):
        raise MessageError("bad_shape", f"{what} must hold exactly {keys}")
    return tuple(obj[key] for key in keys)


def _number(value, what: str) -> int:
    if type(value) is not int or not 0 <= value <= NUMBER_MAX:
        raise MessageError("bad_field", f"{what} is not an integer in 0..2^63-1")
    return value


def _bin(value, length: int, what: str) -> bytes:
    if type(value) is not bytes or len(value) != length:
        raise MessageError("bad_field", f"{what} is not {length} bytes")
    return value


def _bin_upto(value, length_max: int, what: str) -> bytes:
    if type(value) is not bytes or len(value) > length_max:
        raise MessageError("bad_field", f"{what} is not bin of at most {length_max} bytes")
    return value


def _optional_payload(value, limits: Limits) -> bytes | None:
    return None if value is None else _bin_upto(value, limits.payload_bytes_max, "payload")


def _chain(value, chain_id: str) -> None:
    if type(value) is not str:
        raise MessageError("bad_field", "chain is not a str")
    if value != chain_id:
        raise MessageError("wrong_chain", value[:64])


def _signed(obj, limits: Limits) -> Signed:
    if type(obj) is not list or len(obj) != 3:
        raise MessageError("bad_shape", "a signed part is [signer, body, sig]")
    return Signed(
        signer=_bin(obj[0], KEY_BYTES, "signer"),
        body=_bin_upto(obj[1], limits.body_bytes_max, "body"),
        signature=_bin(obj[2], SIGNATURE_BYTES, "sig"),
    )


def _list(value, length_max: int, what: str) -> list:
    if type(value) is not list or len(value) > length_max:
        raise MessageError("bad_shape", f"{what} is not a list of at most {length_max}")
    return value


def parse_header(header: bytes, limits: Limits | None = None) -> Header:
    """Check a block header's shape (contract section 4); the ledger's decoder is the one rule."""
    if type(header) is not bytes or (limits is not None and len(header) > limits.header_bytes_max):
        raise MessageError("bad_header", "header too large")
    try:
        return decode_header(header)
    except ValueError as exc:
        raise MessageError("bad_header", str(exc)) from None


# ---------------------------------------------------------------------------------------
# Bodies.


def _vote_body(body_obj, chain_id: str) -> tuple[int, int, bytes, bytes]:
    chain, view, height, block, payload = _fields(
        body_obj, ("chain", "view", "height", "block", "payload"), "vote body"
    )
    _chain(chain, chain_id)
    return (
        _number(view, "view"),
        _number(height, "height"),
        _bin(block, HASH_BYTES, "block"),
        _bin(payload, HASH_BYTES, "payload"),
    )


def decode_preprepare_parts(
    signed: Signed, header, payload, chain_id: str, limits: Limits
) -> PrePrepare:
    view, height, block, payload_hash = _vote_body(_decode_body(signed.body), chain_id)
    header = _bin_upto(header, limits.header_bytes_max, "header")
    return PrePrepare(signed, view, height, block, payload_hash, header, _optional_payload(payload, limits))


def _prepare(signed: Signed, chain_id: str) -> Prepare:
    view, height, block, payload_hash = _vote_body(_decode_body(signed.body), chain_id)
    return Prepare(signed, view, height, block, payload_hash)


def _commit(signed: Signed, chain_id: str) -> Commit:
    body = _decode_body(signed.body)
    if type(body) is not list or len(body) != 4:
        raise MessageError("bad_shape", "commit body is [chain, height, view, block_hash]")
    _chain(body[0], chain_id)
    return Commit(signed, _number(body[2], "view"), _number(body[1], "height"), _bin(body[3], HASH_BYTES, "block_hash"))


def parse_certificate(obj, limits: Limits) -> Certificate:
    """The contract's certificate map; votes are checked for shape here, for validity by the replica."""
    block_hash, height, sigs, view = _fields(obj, ("block_hash", "height", "sigs", "view"), "certificate")
    votes = []
    for entry in _list(sigs, limits.validators_max, "sigs"):
        if type(entry) is not list or len(entry) != 2:
            raise MessageError("bad_shape", "a certificate vote is [key, sig]")
        votes.append((_bin(entry[0], KEY_BYTES, "vote key"), _bin(entry[1], SIGNATURE_BYTES, "vote sig")))
    return Certificate(_number(height, "height"), _number(view, "view"), _bin(block_hash, HASH_BYTES, "block_hash"), tuple(votes))


def parse_prepared(obj, chain_id: str, limits: Limits) -> PreparedCertificate:
    header, pp, prepares = _fields(obj, ("header", "pp", "prepares"), "prepared certificate")
    preprepare = decode_preprepare_parts(_signed(pp, limits), header, None, chain_id, limits)
    parsed = tuple(_prepare(_signed(item, limits), chain_id) for item in _list(prepares, limits.validators_max, "prepares"))
    return PreparedCertificate(preprepare, parsed)


def _view_change(signed: Signed, payload, chain_id: str, limits: Limits) -> ViewChange:
    cert, chain, height, prepared, view = _fields(
        _decode_body(signed.body), ("cert", "chain", "height", "prepared", "view"), "view-change body"
    )
    _chain(chain, chain_id)
    return ViewChange(
        signed=signed,
        view=_number(view, "view"),
        height=_number(height, "height"),
        certificate=None if cert is None else parse_certificate(cert, limits),
        prepared=None if prepared is None else parse_prepared(prepared, chain_id, limits),
        payload=_optional_payload(payload, limits),
    )


def _new_view(signed: Signed, payload, chain_id: str, limits: Limits) -> NewView:
    chain, pp, vcs, view = _fields(_decode_body(signed.body), ("chain", "pp", "vcs", "view"), "new-view body")
    _chain(chain, chain_id)
    view_changes = tuple(
        _view_change(_signed(item, limits), None, chain_id, limits) for item in _list(vcs, limits.validators_max, "vcs")
    )
    # The re-pre-prepare's header is the carried block's, taken from the certificate it
    # was prepared under; decode it without one and let the replica fill it in.
    preprepare = None if pp is None else decode_preprepare_parts(_signed(pp, limits), b"", None, chain_id, limits)
    return NewView(signed, _number(view, "view"), view_changes, preprepare, _optional_payload(payload, limits))


def decode_message(data: bytes, chain_id: str, limits: Limits) -> Message:
    """Parse one wire message; raise MessageError(reason) for anything malformed."""
    if type(data) is not bytes:
        raise MessageError("bad_encoding", "not bytes")
    items = _unpack_envelope(data, limits)
    kind = items[0]
    if kind == KIND_CERTIFICATE:
        if len(items) != 2:
            raise MessageError("bad_shape", "cert envelope is [\"cert\", body]")
        body = _bin_upto(items[1], limits.body_bytes_max, "certificate")
        return CertificateMessage(parse_certificate(_decode_body(body), limits))
    if type(kind) is not str or kind not in TAGS:
        raise MessageError("unknown_kind", repr(kind)[:32])
    arity = {KIND_PREPREPARE: 6, KIND_PREPARE: 4, KIND_COMMIT: 4, KIND_VIEW_CHANGE: 5, KIND_NEW_VIEW: 5}[kind]
    if len(items) != arity:
        raise MessageError("bad_shape", f"{kind} envelope has {len(items)} items")
    signed = _signed(items[1:4], limits)
    if kind == KIND_PREPREPARE:
        if items[5] is None:
            raise MessageError("bad_shape", "pre-prepare without payload")
        return decode_preprepare_parts(signed, items[4], items[5], chain_id, limits)
    if kind == KIND_PREPARE:
        return _prepare(signed, chain_id)
    if kind == KIND_COMMIT:
        return _commit(signed, chain_id)
    if kind == KIND_VIEW_CHANGE:
        return _view_change(signed, items[4], chain_id, limits)
    return _new_view(signed, items[4], chain_id, limits)


# ---------------------------------------------------------------------------------------
# Building and encoding. Every body is built here by its signer (contract section 1).


def _vote_body_bytes(chain_id: str, view: int, height: int, block_hash: bytes, payload_hash: bytes) -> bytes:
    return codec.encode({"chain": chain_id, "view": view, "height": height, "block": block_hash, "payload": payload_hash})


def _sign(key: KeyPair, kind: str, body: bytes) -> Signed:
    return Signed(key.public_key, body, key.sign(TAGS[kind], body))


def sign_preprepare(
    key: KeyPair, chain_id: str, view: int, height: int, header: bytes, payload: bytes | None,
    block_hash: bytes, payload_hash: bytes,
) -> PrePrepare:
    """A PRE-PREPARE for (view, height) naming the block by header hash and payload hash."""
    body = _vote_body_bytes(chain_id, view, height, block_hash, payload_hash)
    return PrePrepare(_sign(key, KIND_PREPREPARE, body), view, height, block_hash, payload_hash, header, payload)


def sign_prepare(key: KeyPair, chain_id: str, view: int, height: int, block_hash: bytes, payload_hash: bytes) -> Prepare:
    body = _vote_body_bytes(chain_id, view, height, block_hash, payload_hash)
    return Prepare(_sign(key, KIND_PREPARE, body), view, height, block_hash, payload_hash)


def commit_vote_bytes(chain_id: str, height: int, view: int, block_hash: bytes) -> bytes:
    """The bytes a commit vote signs after the commit tag (contract section 4)."""
    return codec.encode([chain_id, height, view, block_hash])


def sign_commit(key: KeyPair, chain_id: str, view: int, height: int, block_hash: bytes) -> Commit:
    body = commit_vote_bytes(chain_id, height, view, block_hash)
    return Commit(_sign(key, KIND_COMMIT, body), view, height, block_hash)


def sign_view_change(
    key: KeyPair, chain_id: str, view: int, height: int,
    certificate: Certificate | None, prepared: PreparedCertificate | None,
) -> ViewChange:
    body = codec.encode(
        {
            "chain": chain_id,
            "view": view,
            "height": height,
            "cert": None if certificate is None else certificate.to_dict(),
            "prepared": None if prepared is None else prepared.to_obj(),
        }
    )
    return ViewChange(_sign(key, KIND_VIEW_CHANGE, body), view, height, certificate, prepared, None)


def sign_new_view(
    key: KeyPair, chain_id: str, view: int, view_changes: tuple[ViewChange, ...], preprepare: PrePrepare | None
) -> NewView:
    body = codec.encode(
        {
            "chain": chain_id,
            "view": view,
            "vcs": [vc.signed.to_list() for vc in view_changes],
            "pp": None if preprepare is None else preprepare.signed.to_list(),
        }
    )
    return NewView(_sign(key, KIND_NEW_VIEW, body), view, view_changes, preprepare, None)


def encode_preprepare(preprepare: PrePrepare, payload: bytes) -> bytes:
    signed = preprepare.signed
    return _pack_envelope([KIND_PREPREPARE, signed.signer, signed.body, signed.signature, preprepare.header, payload])


def encode_vote(vote: Prepare | Commit) -> bytes:
    signed = vote.signed
    return _pack_envelope([vote.kind, signed.signer, signed.body, signed.signature])


def encode_view_change(view_change: ViewChange, payload: bytes | None) -> bytes:
    signed = view_change.signed
    return _pack_envelope([KIND_VIEW_CHANGE, signed.signer, signed.body, signed.signature, payload])


def encode_new_view(new_view: NewView, payload: bytes | None) -> bytes:
    signed = new_view.signed
    return _pack_envelope([KIND_NEW_VIEW, signed.signer, signed.body, signed.signature, payload])


def encode_certificate_message(certificate: Certificate) -> bytes:
    return _pack_envelope([KIND_CERTIFICATE, codec.encode(certificate.to_dict())])
