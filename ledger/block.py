"""Blocks, headers and commit certificates (contract section 4).

A block is its canonical header plus a payload: the canonical msgpack array of the
signed envelopes it carries, in order. The header commits to the envelopes through
`tx_root`, to the result codes through `results_root` and to the state through
`state_root`; the commit certificate sits beside the block, outside the header hash,
because different nodes may hold different valid quorums of votes.
"""
from __future__ import annotations

from dataclasses import dataclass

from ledger import codec, crypto, merkle

HEADER_KEYS = ("chain", "height", "prev", "time", "proposer", "view", "tx_count", "tx_root", "results_root", "state_root")


def quorum(n: int) -> int:
    """q = floor(2n/3) + 1: 2f+1 when n = 3f+1, and the only safe choice for other n."""
    return (2 * n) // 3 + 1


def genesis_hash(genesis: dict) -> bytes:
    return codec.sha256(codec.encode(genesis))


def tx_root(raw_txs: list[bytes]) -> bytes:
    return merkle.root(raw_txs)


def result_leaf(tx_id: bytes, code: str) -> bytes:
    return codec.encode([tx_id, code])


def results_root(tx_ids: list[bytes], codes: list[str]) -> bytes:
    return merkle.root([result_leaf(i, c) for i, c in zip(tx_ids, codes)])


def encode_payload(raw_txs: list[bytes]) -> bytes:
    return codec.encode(list(raw_txs))


def decode_payload(payload: bytes) -> list[bytes]:
    """The payload's envelopes; raises ValueError if it is not a canonical array of bin."""
    value = codec.decode(payload)
    if type(value) is not list or any(type(item) is not bytes for item in value):
        raise ValueError("payload is not an array of encoded transactions")
    return value


def vote_message(chain: str, height: int, view: int, block_hash: bytes) -> bytes:
    """The bytes a commit vote signs after the tag b"ledger/commit/v1"."""
    return codec.encode([chain, height, view, block_hash])


@dataclass(frozen=True, slots=True)
class Header:
    chain: str
    height: int
    prev: bytes
    time: int
    proposer: bytes
    view: int
    tx_count: int
    tx_root: bytes
    results_root: bytes
    state_root: bytes

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in HEADER_KEYS}

    def encode(self) -> bytes:
        return codec.encode(self.to_dict())

    def to_json(self) -> dict:
        return {k: (v.hex() if isinstance(v, bytes) else v) for k, v in self.to_dict().items()}


def decode_header(data: bytes) -> Header:
    """Parse canonical header bytes; raises ValueError with the reason."""
    try:
        value = codec.decode(data)
    except codec.CodecError as exc:
        raise ValueError(f"header: {exc.message}") from None
    if type(value) is not dict or set(value) != set(HEADER_KEYS):
        raise ValueError("header must hold exactly the contract's keys")
    for key in ("height", "time", "view", "tx_count"):
        if type(value[key]) is not int or value[key] < 0:
            raise ValueError(f"header.{key} must be a non-negative integer")
    for key in ("prev", "proposer", "tx_root", "results_root", "state_root"):
        if type(value[key]) is not bytes or len(value[key]) != 32:
            raise ValueError(f"header.{key} must be 32 bytes")
    if type(value["chain"]) is not str:
        raise ValueError("header.chain must be a str")
    return Header(**value)


def block_hash(header_bytes: bytes) -> bytes:
    return codec.sha256(header_bytes)


def certificate_error(cert, chain_id: str, validators: list[bytes], height: int | None = None,
                      block_hash_expected: bytes | None = None) -> str | None:
    """Why `cert` is not a valid commit certificate (None when it is).

    Valid: at least q entries, each a valid commit vote of a distinct genesis validator
    for the certificate's (height, view, block_hash), and nothing else.
    """
    if type(cert) is not dict or set(cert) != {"height", "view", "block_hash", "sigs"}:
        return "certificate must hold exactly height, view, block_hash, sigs"
    if type(cert["height"]) is not int or type(cert["view"]) is not int or cert["view"] < 0:
        return "certificate height and view must be integers"
    if type(cert["block_hash"]) is not bytes or len(cert["block_hash"]) != 32:
        return "certificate block_hash must be 32 bytes"
    if height is not None and cert["height"] != height:
        return f"certificate is for height {cert['height']}, expected {height}"
    if block_hash_expected is not None and cert["block_hash"] != block_hash_expected:
        return "certificate block_hash differs from the header's hash"
    sigs = cert["sigs"]
    if type(sigs) is not list:
        return "certificate sigs must be a list"
    validator_set = set(validators)
    message = vote_message(chain_id, cert["height"], cert["view"], cert["block_hash"])
    seen: set[bytes] = set()
    for entry in sigs:
        if type(entry) is not list or len(entry) != 2 or type(entry[0]) is not bytes or type(entry[1]) is not bytes:
            return "certificate entry must be [validator_key, signature]"
        key, sig = entry
        if key not in validator_set:
            return f"vote from {key.hex()[:16]}, which is not a genesis validator"
        if key in seen:
            return f"duplicate vote from validator {key.hex()[:16]}"
        seen.add(key)
        if not crypto.verify(key, crypto.COMMIT_TAG, message, sig):
            return f"invalid commit vote signature from {key.hex()[:16]}"
    if len(seen) < quorum(len(validators)):
        return f"certificate holds {len(seen)} votes; the quorum is {quorum(len(validators))}"
    return None


def certificate_to_json(cert: dict) -> dict:
    return {
        "height": cert["height"],
        "view": cert["view"],
        "block_hash": cert["block_hash"].hex(),
        "sigs": [[k.hex(), s.hex()] for k, s in cert["sigs"]],
    }


def certificate_from_json(data) -> dict:
    """Inverse of certificate_to_json; raises ValueError on a malformed object."""
    if type(data) is not dict or set(data) != {"height", "view", "block_hash", "sigs"}:
        raise ValueError("malformed certificate: it holds exactly height, view, block_hash, sigs")
    if type(data["height"]) is not int or type(data["view"]) is not int or type(data["sigs"]) is not list:
        raise ValueError("malformed certificate: height and view are integers, sigs a list")
    try:
        return {
            "height": data["height"],
            "view": data["view"],
            "block_hash": bytes.fromhex(data["block_hash"]),
            "sigs": [[bytes.fromhex(k), bytes.fromhex(s)] for k, s in data["sigs"]],
        }
    except (TypeError, ValueError) as exc:
        raise ValueError(f"malformed certificate: {exc}") from None
