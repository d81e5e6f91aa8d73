"""Ed25519 keys and domain-separated signatures (contract section 1).

Every signature signs a purpose tag followed by bytes the signer built itself, so no
signature can be replayed as another kind of message. Verification is libsodium's
`crypto_sign_verify_detached` rule (through PyNaCl), the one rule every node uses.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache

import nacl.exceptions
import nacl.signing

TX_TAG = b"ledger/tx/v1"
COMMIT_TAG = b"ledger/commit/v1"


@lru_cache(maxsize=65536)
def _verify_key(public_key: bytes) -> nacl.signing.VerifyKey:
    return nacl.signing.VerifyKey(public_key)


def verify(public_key: bytes, tag: bytes, message: bytes, signature: bytes) -> bool:
    """True exactly when `signature` is a valid Ed25519 signature of tag + message."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        _verify_key(public_key).verify(tag + message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        return False
    return True


@dataclass(frozen=True)
class KeyPair:
    """A 32-byte seed and its public key."""

    secret_key: bytes
    public_key: bytes

    @classmethod
    def from_seed(cls, seed: bytes) -> "KeyPair":
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        signing = nacl.signing.SigningKey(seed)
        return cls(secret_key=seed, public_key=bytes(signing.verify_key))

    @classmethod
    def generate(cls) -> "KeyPair":
        return cls.from_seed(os.urandom(32))

    def sign(self, tag: bytes, message: bytes) -> bytes:
        return _signing_key(self.secret_key).sign(tag + message).signature

    def save(self, path: str) -> None:
        """Write the key file (contract section 5) with mode 0600."""
        data = json.dumps({"public_key": self.public_key.hex(), "secret_key": self.secret_key.hex()}, indent=2)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(data + "\n")
        os.chmod(path, 0o600)

    @classmethod
    def load(cls, path: str) -> "KeyPair":
        with open(path) as handle:
            data = json.load(handle)
        pair = cls.from_seed(bytes.fromhex(data["secret_key"]))
        if "public_key" in data and bytes.fromhex(data["public_key"]) != pair.public_key:
            raise ValueError(f"{path}: public_key does not match secret_key")
        return pair


@lru_cache(maxsize=64)
def _signing_key(seed: bytes) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(seed)
