"""Network files (contract section 5): genesis, key files, each node's config.toml.

Addresses live only in each node's config, never in genesis, so a validator can move
without a new chain; a node directory refers to `../genesis.json` so the whole network
directory can be copied elsewhere.
"""
from __future__ import annotations

import json
import os
import time
import tomllib
from dataclasses import dataclass

from ledger import block, crypto
from ledger.bodies import CURRENCY_PATTERN, MEMBER_ID_PATTERN

DEFAULT_CURRENCIES = ("USD", "EUR", "GBP", "SGD", "JPY", "CNY", "HKD", "CHF")
DEFAULT_PARAMS = {"max_clock_drift_ms": 5000, "max_block_txs": 10000, "max_block_bytes": 8388608}


class ConfigError(Exception):
    """A home directory, config, key or genesis file that cannot be used, with the reason."""


@dataclass(frozen=True)
class PeerConfig:
    name: str
    public_key: bytes
    host: str
    port: int


@dataclass(frozen=True)
class NodeConfig:
    home: str
    name: str
    genesis_path: str
    key_path: str
    data_dir: str
    rpc_host: str
    rpc_port: int
    p2p_host: str
    p2p_port: int
    peers: tuple[PeerConfig, ...]


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid TOML basic string


def write_config(path: str, *, name: str, rpc: tuple[str, int], p2p: tuple[str, int], peers: list[PeerConfig]) -> None:
    lines = [
        f"name = {_toml_str(name)}",
        'genesis = "../genesis.json"',
        'key = "node_key.json"',
        'data_dir = "data"',
        "",
        "[rpc]",
        f"host = {_toml_str(rpc[0])}",
        f"port = {rpc[1]}",
        "",
        "[p2p]",
        f"host = {_toml_str(p2p[0])}",
        f"port = {p2p[1]}",
    ]
    for peer in peers:
        lines += [
            "",
            "[[peers]]",
            f"name = {_toml_str(peer.name)}",
            f"public_key = {_toml_str(peer.public_key.hex())}",
            f"host = {_toml_str(peer.host)}",
            f"port = {peer.port}",
        ]
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")


def load_config(home: str) -> NodeConfig:
    path = os.path.join(home, "config.toml")
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist (is --home a node directory made by `ledger net init`?)") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        def resolve(p: str) -> str:
            return p if os.path.isabs(p) else os.path.normpath(os.path.join(home, p))

        peers = tuple(
            PeerConfig(name=str(p["name"]), public_key=bytes.fromhex(p["public_key"]), host=str(p["host"]), port=int(p["port"]))
            for p in raw.get("peers", [])
        )
        return NodeConfig(
            home=home,
            name=str(raw["name"]),
            genesis_path=resolve(raw.get("genesis", "../genesis.json")),
            key_path=resolve(raw.get("key", "node_key.json")),
            data_dir=resolve(raw.get("data_dir", "data")),
            rpc_host=str(raw["rpc"]["host"]),
            rpc_port=int(raw["rpc"]["port"]),
            p2p_host=str(raw["p2p"]["host"]),
            p2p_port=int(raw["p2p"]["port"]),
            peers=peers,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: missing or malformed setting: {exc}") from None


def load_genesis(path: str) -> dict:
    try:
        with open(path) as handle:
            genesis = json.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"genesis file {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"genesis file {path}: {exc}") from None
    problem = genesis_problem(genesis)
    if problem:
        raise ConfigError(f"genesis file {path}: {problem}")
    return genesis


def genesis_problem(genesis) -> str | None:
    """Why a parsed genesis object is unusable, or None."""
    if type(genesis) is not dict:
        return "not a JSON object"
    try:
        if type(genesis["chain_id"]) is not str or not genesis["chain_id"]:
            return "chain_id must be a non-empty string"
        if type(genesis["genesis_time"]) is not int:
            return "genesis_time must be an integer (ms)"
        validators = genesis["validators"]
        if type(validators) is not list or not validators:
            return "validators must be a non-empty list"
        keys = [bytes.fromhex(v["public_key"]) for v in validators]
        if any(len(k) != 32 for k in keys) or len(set(keys)) != len(keys):
            return "validator public keys must be distinct 32-byte hex keys"
        members = genesis["members"]
        ids = [m["id"] for m in members]
        if len(set(ids)) != len(ids) or not all(type(i) is str and MEMBER_ID_PATTERN.fullmatch(i) for i in ids):
            return "member ids must be distinct [A-Z0-9]{1,16}"
        if any(len(bytes.fromhex(m["admin_key"])) != 32 for m in members):
            return "member admin keys must be 32-byte hex keys"
        for ccy, member in genesis["issuers"].items():
            if not CURRENCY_PATTERN.fullmatch(ccy) or member not in ids:
                return f"issuer {ccy}={member} names an unknown member or a bad currency"
        params = genesis.get("params", {})
        for key in DEFAULT_PARAMS:
            if key in params and (type(params[key]) is not int or params[key] <= 0):
                return f"params.{key} must be a positive integer"
        # Canonical encoding must be possible (no floats anywhere).
        block.genesis_hash(genesis)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return f"malformed: {exc!r}"
    return None


def params_of(genesis: dict) -> dict:
    return {**DEFAULT_PARAMS, **genesis.get("params", {})}


def init_network(directory: str, *, validators: int = 4, chain_id: str = "ledger-devnet", base_port: int = 7700,
                 host: str = "127.0.0.1", issuers: dict[str, str] | None = None,
                 public_keys_file: str | None = None, genesis_time: int | None = None) -> dict:
    """Write genesis, keys and node directories (section 5); returns the genesis object."""
    if os.path.exists(os.path.join(directory, "genesis.json")):
        raise ConfigError(f"{directory} already holds a network (genesis.json exists)")
    entries = []
    node_keys: list[crypto.KeyPair | None] = []
    admin_keys: list[crypto.KeyPair | None] = []
    if public_keys_file:
        try:
            with open(public_keys_file) as handle:
                listed = json.load(handle)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--public-keys {public_keys_file}: {exc}") from None
        if type(listed) is not list or not listed:
            raise ConfigError("--public-keys FILE must hold a non-empty JSON list")
        for item in listed:
            try:
                entries.append({"name": str(item["name"]), "member": str(item["member"]),
                                "public_key": bytes.fromhex(item["public_key"]), "admin_key": bytes.fromhex(item["admin_key"])})
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"--public-keys entry {item!r}: {exc}") from None
            node_keys.append(None)
            admin_keys.append(None)
    else:
        if validators < 1:
            raise ConfigError("--validators must be at least 1")
        for i in range(validators):
            node_key, admin_key = crypto.KeyPair.generate(), crypto.KeyPair.generate()
            node_keys.append(node_key)
            admin_keys.append(admin_key)
            entries.append({"name": f"node{i}", "member": f"BANK{i}", "public_key": node_key.public_key,
                            "admin_key": admin_key.public_key})
    count = len(entries)
    members = [e["member"] for e in entries]
    issuer_map = {ccy: members[i % count] for i, ccy in enumerate(DEFAULT_CURRENCIES)}
    for ccy, member in (issuers or {}).items():
        if not CURRENCY_PATTERN.fullmatch(ccy) or member not in members:
            raise ConfigError(f"--issuer {ccy}={member}: unknown member or bad currency code")
        issuer_map[ccy] = member
    genesis = {
        "chain_id": chain_id,
        "genesis_time": genesis_time if genesis_time is not None else int(time.time() * 1000),
        "validators": [{"name": e["name"], "member": e["member"], "public_key": e["public_key"].hex()} for e in entries],
        "members": [{"id": e["member"], "name": f"Bank {e['member']}", "admin_key": e["admin_key"].hex()} for e in entries],
        "issuers": issuer_map,
        "params": dict(DEFAULT_PARAMS),
    }
    problem = genesis_problem(genesis)
    if problem:
        raise ConfigError(problem)
    os.makedirs(os.path.join(directory, "keys"), exist_ok=True)
    with open(os.path.join(directory, "genesis.json"), "w") as handle:
        json.dump(genesis, handle, indent=2)
        handle.write("\n")
    for i, entry in enumerate(entries):
        if admin_keys[i] is not None:
            admin_keys[i].save(os.path.join(directory, "keys", f"{entry['member']}.json"))
        node_dir = os.path.join(directory, entry["name"])
        os.makedirs(node_dir, exist_ok=True)
        if node_keys[i] is not None:
            node_keys[i].save(os.path.join(node_dir, "node_key.json"))
        peers = [PeerConfig(name=other["name"], public_key=other["public_key"], host=host, port=base_port + 100 + j)
                 for j, other in enumerate(entries) if j != i]
        write_config(os.path.join(node_dir, "config.toml"), name=entry["name"],
                     rpc=(host, base_port + i), p2p=(host, base_port + 100 + i), peers=peers)
    return genesis
