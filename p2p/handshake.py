"""The validator link handshake, with no I/O (in the style of h11: bytes in, bytes out).

Both ends of a new WebSocket run one `Handshake` each:

    1. each side sends `hello()`:  {"type": "hello", "version": 1, "chain": chain_id,
                                    "genesis": genesis_hash, "key": own key, "nonce": 32 fresh bytes}
    2. on the peer's hello, `receive_hello` checks chain, genesis and key, and returns
       our `auth` frame: {"type": "auth", "sig": signature}
    3. on the peer's auth, `receive_auth` verifies it and returns the proven peer key.

The signature is Ed25519 over HANDSHAKE_TAG + canonical msgpack of

    [chain_id, genesis_hash, signer_key, verifier_key, signer_nonce, verifier_nonce]

which each side builds itself: a key never signs bytes chosen by someone else. The
verifier's fresh nonce makes a recorded signature useless on a new connection (no
replay), and the order of keys and nonces makes our own signature useless when sent
back to us (no reflection). Wrong chain or genesis also fails the signature, but it is
checked in the hello first so that the failure is counted under a clear reason.

Every frame is one canonical msgpack map (contract section 1); anything else is
`garbage`. A failed handshake cannot be resumed: the caller closes the connection.
"""
from __future__ import annotations

import secrets

from ledger import codec
from ledger.crypto import KeyPair, verify

HANDSHAKE_TAG = b"ledger/p2p-handshake/v1"
PROTOCOL_VERSION = 1
NONCE_BYTES = 32
KEY_BYTES = 32
HASH_BYTES = 32
SIGNATURE_BYTES = 64
# A hello is about 150 bytes; anything much larger is not a handshake frame.
HANDSHAKE_FRAME_BYTES_MAX = 1024

# Reasons a handshake fails; the network counts each as "handshake_<reason>".
GARBAGE = "garbage"                    # not a canonical msgpack frame of the expected shape
WRONG_VERSION = "wrong_version"        # a handshake version we do not speak
WRONG_CHAIN = "wrong_chain"            # another chain id or genesis hash
SELF_CONNECTION = "self_connection"    # the peer claims our own key
UNEXPECTED_KEY = "unexpected_key"      # we dialed validator X and someone else answered
UNKNOWN_KEY = "unknown_key"            # not a validator in our configuration
WRONG_DIRECTION = "wrong_direction"    # a validator that should accept our dial dialed us
REFLECTED_NONCE = "reflected_nonce"    # the peer sent our own nonce back
BAD_SIGNATURE = "bad_signature"        # the auth signature does not verify
HANDSHAKE_FAILURE_REASONS = (
    GARBAGE, WRONG_VERSION, WRONG_CHAIN, SELF_CONNECTION, UNEXPECTED_KEY,
    UNKNOWN_KEY, WRONG_DIRECTION, REFLECTED_NONCE, BAD_SIGNATURE,
)

_HELLO_KEYS = frozenset(("type", "version", "chain", "genesis", "key", "nonce"))
_AUTH_KEYS = frozenset(("type", "sig"))


class HandshakeError(Exception):
    """The peer broke the handshake; `reason` is one of HANDSHAKE_FAILURE_REASONS."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def handshake_sign_bytes(
    chain_id: str,
    genesis_hash: bytes,
    signer_key: bytes,
    verifier_key: bytes,
    signer_nonce: bytes,
    verifier_nonce: bytes,
) -> bytes:
    """The bytes a handshake signature covers (after HANDSHAKE_TAG), built by each side itself."""
    return codec.encode([chain_id, genesis_hash, signer_key, verifier_key, signer_nonce, verifier_nonce])


def _decode_map(data: bytes, expected_keys: frozenset[str], frame_type: str) -> dict:
    if len(data) > HANDSHAKE_FRAME_BYTES_MAX:
        raise HandshakeError(GARBAGE, f"{frame_type} frame of {len(data)} bytes")
    try:
        value = codec.decode(data)
    except codec.CodecError as error:
        raise HandshakeError(GARBAGE, f"{frame_type} frame: {error.code}") from None
    if type(value) is not dict or value.keys() != expected_keys:
        raise HandshakeError(GARBAGE, f"{frame_type} frame has the wrong shape")
    if value["type"] != frame_type:
        raise HandshakeError(GARBAGE, f"expected a {frame_type} frame, got type {value['type']!r}")
    return value


def _require_bytes(value, length: int, field: str) -> bytes:
    if type(value) is not bytes or len(value) != length:
        raise HandshakeError(GARBAGE, f"{field} is not {length} bytes")
    return value


class Handshake:
    """One side of one handshake. Dialers pass the key they dialed; acceptors pass None.

    `validator_keys` are the keys we may link with (our configured peers). An acceptor
    takes only validators with a smaller key than its own: the smaller key dials, so a
    link that arrives the other way round is a misconfigured or hostile peer.
    """

    def __init__(
        self,
        *,
        chain_id: str,
        genesis_hash: bytes,
        key: KeyPair,
        validator_keys: frozenset[bytes],
        expected_peer_key: bytes | None,
    ):
        if len(genesis_hash) != HASH_BYTES:
            raise ValueError("genesis_hash must be 32 bytes")
        if expected_peer_key is not None and expected_peer_key not in validator_keys:
            raise ValueError("the dialed key must be one of validator_keys")
        self._chain_id = chain_id
        self._genesis_hash = genesis_hash
        self._key = key
        self._validator_keys = validator_keys
        self._expected_peer_key = expected_peer_key
        self._own_nonce = secrets.token_bytes(NONCE_BYTES)
        self._peer_key: bytes | None = None
        self._peer_nonce: bytes | None = None
        self._state = "await_hello"  # -> "await_auth" -> "done"; "failed" after any error

    @property
    def peer_key(self) -> bytes | None:
        """The peer's key once proven (after `receive_auth` succeeded), else None."""
        return self._peer_key if self._state == "done" else None

    def hello(self) -> bytes:
        """Our hello frame; send it as soon as the WebSocket is open."""
        return codec.encode({
            "type": "hello",
            "version": PROTOCOL_VERSION,
            "chain": self._chain_id,
            "genesis": self._genesis_hash,
            "key": self._key.public_key,
            "nonce": self._own_nonce,
        })

    def receive_hello(self, data: bytes) -> bytes:
        """Check the peer's hello; return our auth frame. Raises HandshakeError."""
        self._require_state("await_hello")
        self._state = "failed"  # until this call returns normally
        hello = _decode_map(data, _HELLO_KEYS, "hello")
        if hello["version"] != PROTOCOL_VERSION:
            raise HandshakeError(WRONG_VERSION, f"version {hello['version']!r}")
        if type(hello["chain"]) is not str:
            raise HandshakeError(GARBAGE, "chain is not a str")
        genesis_hash = _require_bytes(hello["genesis"], HASH_BYTES, "genesis")
        peer_key = _require_bytes(hello["key"], KEY_BYTES, "key")
        peer_nonce = _require_bytes(hello["nonce"], NONCE_BYTES, "nonce")
        if hello["chain"] != self._chain_id or genesis_hash != self._genesis_hash:
            raise HandshakeError(WRONG_CHAIN, f"peer is on chain {hello['chain']!r} genesis {genesis_hash.hex()[:16]}")
        self._check_peer_key(peer_key)
        if peer_nonce == self._own_nonce:
            raise HandshakeError(REFLECTED_NONCE, "peer echoed our nonce")
        self._peer_key = peer_key
        self._peer_nonce = peer_nonce
        signature = self._key.sign(HANDSHAKE_TAG, handshake_sign_bytes(
            self._chain_id, self._genesis_hash, self._key.public_key, peer_key, self._own_nonce, peer_nonce,
        ))
        self._state = "await_auth"
        return codec.encode({"type": "auth", "sig": signature})

    def receive_auth(self, data: bytes) -> bytes:
        """Verify the peer's auth frame; return its proven key. Raises HandshakeError."""
        self._require_state("await_auth")
        self._state = "failed"
        auth = _decode_map(data, _AUTH_KEYS, "auth")
        signature = _require_bytes(auth["sig"], SIGNATURE_BYTES, "sig")
        # Rebuilt from our own view: the peer as signer, us as verifier, our nonce last.
        expected_bytes = handshake_sign_bytes(
            self._chain_id, self._genesis_hash, self._peer_key, self._key.public_key, self._peer_nonce, self._own_nonce,
        )
        if not verify(self._peer_key, HANDSHAKE_TAG, expected_bytes, signature):
            raise HandshakeError(BAD_SIGNATURE, f"auth from {self._peer_key.hex()[:16]} does not verify")
        self._state = "done"
        return self._peer_key

    def _check_peer_key(self, peer_key: bytes) -> None:
        own_key = self._key.public_key
        if peer_key == own_key:
            raise HandshakeError(SELF_CONNECTION, "peer claims our own key")
        if self._expected_peer_key is not None:
            if peer_key != self._expected_peer_key:
                raise HandshakeError(UNEXPECTED_KEY, f"dialed {self._expected_peer_key.hex()[:16]}, "
                                                     f"answered by {peer_key.hex()[:16]}")
            return
        if peer_key not in self._validator_keys:
            raise HandshakeError(UNKNOWN_KEY, f"{peer_key.hex()[:16]} is not a configured validator")
        if not peer_key < own_key:
            raise HandshakeError(WRONG_DIRECTION, f"{peer_key.hex()[:16]} has the larger key and must accept, not dial")

    def _require_state(self, state: str) -> None:
        # Local misuse (calling out of order or after a failure), never the peer's fault.
        if self._state != state:
            raise RuntimeError(f"handshake is in state {self._state}, not {state}")
