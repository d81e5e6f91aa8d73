"""The node against INTERFACE.md sections 5 (network files), 6 (node RPC), 7 (command
line) and 8 (audit), through real `ledger` processes and a client that knows only the
contract (tests/contract_client.py plus the independent checks below). Each test quotes
the contract line it holds the node to.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
import urllib.request

import msgpack
import nacl.signing
import pytest

from tests.contract_client import Key, canonical, http, sign_tx, submit_batch
from tests.netutil import ROOT, Network, free_base_port, ledger_cmd, wait_status

pytestmark = pytest.mark.slow

HEX64 = re.compile(r"[0-9a-f]{64}")
HEX128 = re.compile(r"[0-9a-f]{128}")
CURRENCIES = ["USD", "EUR", "GBP", "SGD", "JPY", "CNY", "HKD", "CHF"]
_nonce = iter(range(10**6, 10**9))


def now_ms() -> int:
    return int(time.time() * 1000)


def quorum(n: int) -> int:
    return (2 * n) // 3 + 1


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(ledger_cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------- independent checks
def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def decode_canonical(data: bytes):
    """Decode msgpack and insist it is canonical (contract section 1)."""
    value = msgpack.unpackb(data, raw=False, strict_map_key=True)
    assert canonical(value) == data, "not canonical msgpack"
    return value


def rfc6962_root(leaves: list[bytes]) -> bytes:
    if not leaves:
        return sha256(b"")
    if len(leaves) == 1:
        return sha256(b"\x00" + leaves[0])
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return sha256(b"\x01" + rfc6962_root(leaves[:k]) + rfc6962_root(leaves[k:]))


def rfc6962_root_from_path(leaf: bytes, index: int, size: int, path: list[bytes]) -> bytes | None:
    """RFC 9162 section 2.1.3.2: the path runs from the leaf's sibling up to the root's child."""
    if index >= size:
        return None
    fn, sn, r = index, size - 1, sha256(b"\x00" + leaf)
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = sha256(b"\x01" + p + r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = sha256(b"\x01" + r + p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def check_certificate(cert: dict, genesis: dict, height: int, block_hash_hex: str) -> None:
    """Section 4: {height, view, block_hash, sigs: [[validator_key, sig], ...]} (JSON: hex strings),
    at least q votes, each a valid vote of a distinct genesis validator."""
    assert set(cert) == {"height", "view", "block_hash", "sigs"}, cert
    assert type(cert["height"]) is int and cert["height"] == height
    assert type(cert["view"]) is int and cert["view"] >= 0
    assert cert["block_hash"] == block_hash_hex
    validators = {v["public_key"] for v in genesis["validators"]}
    message = b"ledger/commit/v1" + canonical([genesis["chain_id"], height, cert["view"], bytes.fromhex(block_hash_hex)])
    seen = set()
    for entry in cert["sigs"]:
        assert type(entry) is list and len(entry) == 2
        key, sig = entry
        assert HEX64.fullmatch(key) and HEX128.fullmatch(sig), entry
        assert key in validators and key not in seen
        seen.add(key)
        nacl.signing.VerifyKey(bytes.fromhex(key)).verify(message, bytes.fromhex(sig))
    assert len(seen) >= quorum(len(genesis["validators"]))


def tx_id_of_signed(raw: bytes) -> str:
    return sha256(canonical(decode_canonical(raw)["tx"])).hex()


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def net4(tmp_path_factory):
    """Four validators, all running and connected."""
    network = Network(str(tmp_path_factory.mktemp("review4") / "net"), validators=4)
    try:
        network.start_connected()
        yield network
    finally:
        network.stop_all()


@pytest.fixture(scope="module")
def lonely(tmp_path_factory):
    """node0 of a two-validator network, alone: no quorum, so every admitted tx stays pending."""
    network = Network(str(tmp_path_factory.mktemp("lonely") / "net"), validators=2)
    try:
        network.start(0)
        network.wait_rpc(0)
        yield network
    finally:
        network.stop_all()


def bank_key(network: Network, member: str = "BANK0") -> Key:
    return Key.from_file(os.path.join(network.directory, "keys", f"{member}.json"))


def open_account(bank: Key, account: str, key: bytes, expires: int | None = None) -> tuple[bytes, str]:
    return sign_tx("test-chain", "account.open", {"id": account, "owner": "BANK0", "key": key}, [bank],
                   next(_nonce), expires or now_ms() + 600_000)


def fake_signed(signers: int) -> bytes:
    """A well-formed envelope with `signers` signers and signatures that do not verify."""
    tx = {"chain": "test-chain", "type": "transfer", "nonce": next(_nonce), "expires": now_ms() + 600_000,
          "signers": [os.urandom(32) for _ in range(signers)],
          "body": {"from": "a", "to": "b", "currency": "USD", "amount": 1}}
    return canonical({"tx": tx, "sigs": [os.urandom(64) for _ in range(signers)]})


# ---------------------------------------------------------------------- section 6: body limits
def _bytes_accepted_after_413(port: int, path: str, declared: int, wait_s: float = 2.0) -> int:
    """Announce a `declared`-byte body, read the 413, then offer the body: how much does the node take?"""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
                     f"Content-Length: {declared}\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), head
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        while len(body) < length:
            body += sock.recv(65536)
        assert json.loads(body)["error"]["code"] == "too_large"
        sock.settimeout(wait_s)
        chunk = bytes(1 << 20)
        sent = 0
        deadline = time.monotonic() + 15
        try:
            while sent < declared and time.monotonic() < deadline:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:  # timeout (nobody reads), reset or broken pipe (closed): refused
            pass
        return sent
    finally:
        sock.close()


@pytest.mark.parametrize("path,declared", [("/v1/txs", 64 * 1024 * 1024), ("/v1/txs/batch", 160 * 1024 * 1024)])
def test_an_oversize_body_is_not_read_whole_after_the_413(lonely, path, declared):
    """Section 6: "Request bodies over 256 KiB (single submission) or 32 MiB (batch) are refused
    with 413 `too_large` without being read whole."

    The 413 comes at once from the Content-Length; then the node drops at most the limit
    again (so that a small overshoot still reads its 413) and closes. aiohttp's lingering
    close would otherwise read and drop the rest for 10 s: once 33 GiB over one loopback
    connection."""
    sent = _bytes_accepted_after_413(lonely.base_port, path, declared)
    assert sent < declared, (f"after answering 413 the node read the whole {declared >> 20} MiB body "
                             f"({sent >> 20} MiB accepted)")


def test_body_limits_are_exactly_256_kib_and_32_mib(lonely):
    """Section 6: bodies *over* 256 KiB (single) or 32 MiB (batch) are 413 `too_large`; a body
    of exactly the limit is read (here: valid JSON padded with whitespace)."""
    rpc = lonely.rpc(0)
    single = b'{"tx": "zz"}'
    status, answer = http("POST", f"{rpc}/v1/txs", single.ljust(256 * 1024))
    assert (status, answer["error"]["code"]) == (400, "bad_encoding"), answer
    status, answer = http("POST", f"{rpc}/v1/txs", single.ljust(256 * 1024 + 1))
    assert (status, answer["error"]["code"]) == (413, "too_large"), answer
    batch = b'{"txs": []}'
    status, answer = http("POST", f"{rpc}/v1/txs/batch", batch.ljust(32 * 1024 * 1024))
    assert (status, answer) == (200, {"results": []})
    status, answer = http("POST", f"{rpc}/v1/txs/batch", batch.ljust(32 * 1024 * 1024 + 1))
    assert (status, answer["error"]["code"]) == (413, "too_large"), answer


def test_batch_entry_and_signature_limits_in_both_forms(lonely):
    """Section 6: batch "at most 10,000, else 413 too_large" in JSON or as a msgpack array of
    bin; section 2: "a batch carries at most 20,000 signatures in all (more: the whole batch
    is refused, 413 too_large)"."""
    rpc = lonely.rpc(0)
    status, answer = submit_batch(rpc, [b"\x00"] * 10_001)
    assert (status, answer["error"]["code"]) == (413, "too_large"), answer
    status, answer = submit_batch(rpc, [b"\x00"] * 10_000)
    assert status == 200 and len(answer["results"]) == 10_000
    assert all(set(r) == {"error"} and r["error"]["code"] == "invalid_tx" for r in answer["results"])
    big = [fake_signed(128) for _ in range(156)]  # 19,968 signatures
    over, exact = big + [fake_signed(33)], big + [fake_signed(32)]
    for raws, expected in ((over, 413), (exact, 200)):
        for form in ("msgpack", "json"):
            if form == "msgpack":
                status, answer = submit_batch(rpc, raws)
            else:
                status, answer = http("POST", f"{rpc}/v1/txs/batch", json.dumps({"txs": [r.hex() for r in raws]}).encode())
            assert status == expected, (form, status, str(answer)[:300])
            if expected == 413:
                assert answer["error"]["code"] == "too_large"
            else:  # every entry answered in order, in place
                assert [r["error"]["code"] for r in answer["results"]] == ["bad_signature"] * len(raws)


# ---------------------------------------------------------------------- section 6: tx status while pending
def test_tx_status_while_pending_then_unknown_once_expired(lonely):
    """Section 6: GET /v1/txs/{tx_id} is `{"tx_id", "status": "pending" | "committed", "height",
    "index", "result"}` "(height, index, result null while pending); 404 unknown_tx when the node
    holds no such tx (never seen, or dropped from the mempool when it expired)"; POST with
    ?wait=commit&timeout=S: "202 pending if S seconds pass first"."""
    rpc, bank = lonely.rpc(0), bank_key(lonely)
    expires = now_ms() + 1500
    raw, tx_id = open_account(bank, "BANK0:soon", bank.public, expires=expires)
    status, answer = http("POST", f"{rpc}/v1/txs", raw, "application/msgpack")
    assert (status, answer) == (202, {"tx_id": tx_id, "status": "pending"})
    status, answer = http("GET", f"{rpc}/v1/txs/{tx_id}")
    assert (status, answer) == (200, {"tx_id": tx_id, "status": "pending", "height": None, "index": None,
                                      "result": None})
    raw2, tx_id2 = open_account(bank, "BANK0:later", bank.public)
    started = time.monotonic()
    status, answer = http("POST", f"{rpc}/v1/txs?wait=commit&timeout=0.3", raw2, "application/msgpack")
    assert (status, answer) == (202, {"tx_id": tx_id2, "status": "pending"})
    assert 0.25 <= time.monotonic() - started < 5
    status, answer = http("GET", f"{rpc}/v1/txs/{tx_id2}/proof")
    assert status == 404 and answer["error"]["code"] == "not_committed"  # docs/decisions.md
    time.sleep(max(0.0, (expires - now_ms()) / 1000) + 0.5)
    status, answer = http("GET", f"{rpc}/v1/txs/{tx_id}")
    assert (status, answer["error"]["code"]) == (404, "unknown_tx"), answer
    assert answer["error"]["message"]


# ---------------------------------------------------------------------- section 6: committed, proof, blocks
@pytest.fixture(scope="module")
def committed(net4):
    """14 transactions (13 ok, one failing) committed on the 4-validator network."""
    rpc, bank = net4.rpc(0), bank_key(net4)
    raws = [open_account(bank, f"BANK0:r{i}", bank.public) for i in range(13)]
    raws.append(sign_tx("test-chain", "issue", {"account": "BANK0:nobody", "currency": "USD", "amount": 5}, [bank],
                        next(_nonce), now_ms() + 600_000))
    status, answer = submit_batch(rpc, [r for r, _ in raws])
    assert status == 200 and [r["tx_id"] for r in answer["results"]] == [t for _, t in raws], answer
    deadline = time.time() + 20
    statuses = {}
    for raw, tx_id in raws:
        while True:
            status, body = http("GET", f"{rpc}/v1/txs/{tx_id}")
            if status == 200 and body["status"] == "committed":
                statuses[tx_id] = (raw, body)
                break
            assert time.time() < deadline, body
            time.sleep(0.05)
    return statuses


def test_committed_status_shape(net4, committed):
    """Section 6: `{"tx_id", "status": "committed", "height", "index", "result": {"code", "message"}}`."""
    codes = []
    for tx_id, (_, body) in committed.items():
        assert set(body) == {"tx_id", "status", "height", "index", "result"}
        assert body["tx_id"] == tx_id and body["status"] == "committed"
        assert type(body["height"]) is int and body["height"] >= 1 and type(body["index"]) is int
        assert set(body["result"]) == {"code", "message"} and type(body["result"]["message"]) is str
        codes.append(body["result"]["code"])
    assert codes.count("ok") == 13 and codes[-1] == "unknown_account"


def test_proofs_verify_holding_only_genesis(net4, committed):
    """Section 6: the proof `{"tx_id", "tx": hex(signed), "height", "index", "tx_count", "code",
    "tx_path": [hex], "results_path": [hex], "header": hex(canonical header), "commit": certificate}`,
    paths "listed from the leaf's sibling up to the root's child", "enough for a client that holds
    only genesis to verify inclusion and result". Checked with RFC 9162's algorithm."""
    genesis = net4.genesis
    prev_of_1 = sha256(canonical(genesis)).hex()
    multi_leaf = False
    for i in range(net4.validators):  # every node serves a valid proof
        for tx_id, (raw, body) in committed.items():
            status, proof = http("GET", f"{net4.rpc(i)}/v1/txs/{tx_id}/proof")
            assert status == 200, proof
            assert set(proof) == {"tx_id", "tx", "height", "index", "tx_count", "code", "tx_path", "results_path",
                                  "header", "commit"}
            assert proof["tx_id"] == tx_id and proof["tx"] == raw.hex() and tx_id_of_signed(raw) == tx_id
            assert (proof["height"], proof["index"], proof["code"]) == (body["height"], body["index"],
                                                                        body["result"]["code"])
            header_bytes = bytes.fromhex(proof["header"])
            header = decode_canonical(header_bytes)
            assert set(header) == {"chain", "height", "prev", "time", "proposer", "view", "tx_count", "tx_root",
                                   "results_root", "state_root"}
            assert header["chain"] == genesis["chain_id"] and header["height"] == proof["height"]
            assert header["tx_count"] == proof["tx_count"] and 0 <= proof["index"] < proof["tx_count"]
            if header["height"] == 1:
                assert header["prev"].hex() == prev_of_1
            assert all(HEX64.fullmatch(h) for h in proof["tx_path"] + proof["results_path"])
            tx_path = [bytes.fromhex(h) for h in proof["tx_path"]]
            results_path = [bytes.fromhex(h) for h in proof["results_path"]]
            assert rfc6962_root_from_path(raw, proof["index"], proof["tx_count"], tx_path) == header["tx_root"]
            result_leaf = canonical([bytes.fromhex(tx_id), proof["code"]])
            assert rfc6962_root_from_path(result_leaf, proof["index"], proof["tx_count"],
                                          results_path) == header["results_root"]
            check_certificate(proof["commit"], genesis, proof["height"], sha256(header_bytes).hex())
            multi_leaf |= proof["tx_count"] > 2 and len(tx_path) >= 2
    assert multi_leaf, "no block held enough transactions to test the path order"


def test_blocks_with_and_without_txs(net4, committed):
    """Section 6: `{"height", "hash", "header": {...}, "header_bytes": hex(canonical header), "tx_ids": [hex],
    "results": [code], "commit": certificate}`; with `?txs=1` also `"txs": [hex(signed), ...]`."""
    rpc, genesis = net4.rpc(1), net4.genesis
    heights = sorted({body["height"] for _, body in committed.values()})
    status, latest = http("GET", f"{rpc}/v1/blocks/latest")
    assert status == 200 and latest["height"] >= heights[-1]
    previous_hash = None
    for height in range(1, latest["height"] + 1):
        status, plain = http("GET", f"{rpc}/v1/blocks/{height}")
        status_txs, full = http("GET", f"{rpc}/v1/blocks/{height}?txs=1")
        assert status == status_txs == 200
        keys = {"height", "hash", "header", "header_bytes", "tx_ids", "results", "commit"}
        assert set(plain) == keys and set(full) == keys | {"txs"}
        assert {k: full[k] for k in keys} == plain
        header_bytes = bytes.fromhex(plain["header_bytes"])
        header = decode_canonical(header_bytes)
        # header JSON: the same fields, byte strings as lowercase hex, integers as integers
        assert plain["header"] == {k: (v.hex() if isinstance(v, bytes) else v) for k, v in header.items()}
        assert plain["hash"] == sha256(header_bytes).hex() and plain["height"] == header["height"] == height
        assert header["prev"].hex() == (previous_hash or sha256(canonical(genesis)).hex())
        txs = [bytes.fromhex(t) for t in full["txs"]]
        assert len(txs) == len(plain["tx_ids"]) == len(plain["results"]) == header["tx_count"]
        assert [tx_id_of_signed(t) for t in txs] == plain["tx_ids"]
        assert all(type(code) is str for code in plain["results"])
        assert rfc6962_root(txs) == header["tx_root"]
        assert rfc6962_root([canonical([bytes.fromhex(i), c]) for i, c in zip(plain["tx_ids"], plain["results"])]) \
            == header["results_root"]
        check_certificate(plain["commit"], genesis, height, plain["hash"])
        previous_hash = plain["hash"]


def test_status_fields_and_types(net4, committed):
    """Section 6: `{"chain_id", "node" (its name, e.g. "node0"), "validator" (its public key), "height",
    "last_block_hash", "view", "primary" (public key of the view's primary), "peers": [{"name",
    "connected"}], "mempool_size", "syncing"}`; section 4: the primary of view v is validators[v mod n]."""
    genesis = net4.genesis
    validators = [v["public_key"] for v in genesis["validators"]]
    for i in range(net4.validators):
        status, st = http("GET", f"{net4.rpc(i)}/v1/status")
        assert status == 200
        assert st["chain_id"] == genesis["chain_id"] and st["node"] == f"node{i}"
        assert st["validator"] == validators[i]
        assert type(st["height"]) is int and st["height"] >= 1 and HEX64.fullmatch(st["last_block_hash"])
        assert type(st["view"]) is int and st["primary"] == validators[st["view"] % len(validators)]
        assert sorted(p["name"] for p in st["peers"]) == sorted(f"node{j}" for j in range(4) if j != i)
        assert all(set(p) == {"name", "connected"} and type(p["connected"]) is bool for p in st["peers"])
        assert type(st["mempool_size"]) is int and type(st["syncing"]) is bool


def test_metrics_are_prometheus_text(net4):
    """Section 6: `GET /metrics` | Prometheus text format."""
    with urllib.request.urlopen(f"{net4.rpc(0)}/metrics", timeout=10) as response:
        assert response.headers.get_content_type() == "text/plain"
        text = response.read().decode()
    assert text.endswith("\n")
    typed, sampled = {}, set()
    sample = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (-?[0-9.]+(?:e[+-]?[0-9]+)?|NaN|[+-]Inf)( -?[0-9]+)?")
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped") and name not in typed, line
            typed[name] = kind
        elif line.startswith("#"):
            assert line.startswith("# HELP "), line
        else:
            match = sample.fullmatch(line)
            assert match, line
            name = match.group(1)
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in typed or base in typed, f"{name} has no TYPE line before it"
            assert (name, match.group(2)) not in sampled, f"{name} repeated"
            sampled.add((name, match.group(2)))
    assert "ledger_height" in typed


# ---------------------------------------------------------------------- section 5: network files
def test_net_init_layout_keys_ports_and_issuers(tmp_path):
    """Section 5: DIR/genesis.json, DIR/keys/BANK<i>.json, DIR/node<i>/config.toml and node_key.json;
    RPC on H:P+i, peers on H:P+100+i; key files `{"public_key": hex, "secret_key": hex}` (secret =
    32-byte seed) with mode 0600; default issuers USD..CHF round-robin to BANK0..BANK<N-1>; each
    --issuer replaces the default for that currency only."""
    from ledger.network import load_config

    for n in (1, 3, 10):
        directory = tmp_path / f"n{n}"
        result = run_cli("net", "init", "--validators", str(n), "--dir", str(directory), "--base-port", "9100",
                         "--host", "127.0.0.3", "--chain-id", f"c{n}", "--issuer", "AUD=BANK0", "--issuer",
                         f"GBP=BANK{n - 1}")
        assert result.returncode == 0, result.stderr
        genesis = json.loads((directory / "genesis.json").read_text())
        assert genesis["chain_id"] == f"c{n}" and type(genesis["genesis_time"]) is int
        assert genesis["validators"] == [{"name": f"node{i}", "member": f"BANK{i}",
                                          "public_key": genesis["validators"][i]["public_key"]} for i in range(n)]
        assert [m["id"] for m in genesis["members"]] == [f"BANK{i}" for i in range(n)]
        expected = {ccy: f"BANK{i % n}" for i, ccy in enumerate(CURRENCIES)}
        expected.update({"AUD": "BANK0", "GBP": f"BANK{n - 1}"})
        assert genesis["issuers"] == expected
        assert genesis["params"] == {"max_clock_drift_ms": 5000, "max_block_txs": 10000, "max_block_bytes": 8388608}
        assert sorted(os.listdir(directory / "keys")) == sorted(f"BANK{i}.json" for i in range(n))
        for i in range(n):
            for path, public in ((directory / "keys" / f"BANK{i}.json", genesis["members"][i]["admin_key"]),
                                 (directory / f"node{i}" / "node_key.json", genesis["validators"][i]["public_key"])):
                assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
                data = json.loads(path.read_text())
                assert set(data) == {"public_key", "secret_key"} and data["public_key"] == public
                seed = bytes.fromhex(data["secret_key"])
                assert len(seed) == 32 and bytes(nacl.signing.SigningKey(seed).verify_key).hex() == public
            config = load_config(str(directory / f"node{i}"))  # the project's own reader of config.toml
            assert (config.name, config.rpc_host, config.rpc_port) == (f"node{i}", "127.0.0.3", 9100 + i)
            assert (config.p2p_host, config.p2p_port) == ("127.0.0.3", 9200 + i)
            assert [(p.name, p.public_key.hex(), p.host, p.port) for p in config.peers] == [
                (f"node{j}", genesis["validators"][j]["public_key"], "127.0.0.3", 9200 + j) for j in range(n) if j != i]
            assert os.path.samefile(config.genesis_path, directory / "genesis.json")
            assert os.path.samefile(config.key_path, directory / f"node{i}" / "node_key.json")
            assert os.path.abspath(config.data_dir) == os.path.abspath(directory / f"node{i}" / "data")
            assert "127.0.0.3" not in json.dumps(genesis) and "9100" not in json.dumps(genesis)


def test_net_init_from_public_keys_default_issuers_follow_the_listed_members(tmp_path):
    """Section 5: `--public-keys FILE` builds genesis from public keys alone and writes no secret keys;
    default issuers go round-robin over the members."""
    entries = [{"name": f"node{i}", "member": f"BANK{i}", "public_key": os.urandom(32).hex(),
                "admin_key": os.urandom(32).hex()} for i in range(3)]
    listing = tmp_path / "keys.json"
    listing.write_text(json.dumps(entries))
    directory = tmp_path / "net"
    result = run_cli("net", "init", "--dir", str(directory), "--public-keys", str(listing))
    assert result.returncode == 0, result.stderr
    genesis = json.loads((directory / "genesis.json").read_text())
    assert genesis["validators"] == [{k: e[k] for k in ("name", "member", "public_key")} for e in entries]
    assert [(m["id"], m["admin_key"]) for m in genesis["members"]] == [(e["member"], e["admin_key"]) for e in entries]
    assert genesis["issuers"] == {ccy: f"BANK{i % 3}" for i, ccy in enumerate(CURRENCIES)}
    secrets = [os.path.join(root, name) for root, _, files in os.walk(directory) for name in files
               if "secret_key" in open(os.path.join(root, name)).read()]
    assert secrets == []


# ---------------------------------------------------------------------- section 7: node, audit, keygen, devnet
def _stop(process: subprocess.Popen, sig: int) -> int:
    process.send_signal(sig)
    try:
        return process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def test_node_stops_cleanly_on_sigint_and_sigterm_and_audits_intact_even_copied(tmp_path):
    """Section 7: `ledger node --home DIR/node<i>` "runs one node in the foreground; SIGTERM or SIGINT
    stops it cleanly"; section 5: "the layout above must keep working when DIR as a whole is copied
    elsewhere"; section 8: `ledger audit` exits 0 for an intact chain, `--json`, exit 2 only for a home
    or store that cannot be opened at all; `ledger audit --rpc URL --genesis FILE`."""
    network = Network(str(tmp_path / "net"), validators=1)
    rpc, bank = network.rpc(0), bank_key(network)
    log = open(tmp_path / "node.log", "ab")
    process = subprocess.Popen(ledger_cmd("node", "--home", network.home(0)), cwd=ROOT, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        wait_status(rpc, process)
        raw, tx_id = open_account(bank, "BANK0:kept", bank.public)
        status, answer = http("POST", f"{rpc}/v1/txs?wait=commit", raw, "application/msgpack")
        assert status == 200 and answer["result"]["code"] == "ok", answer
        online = run_cli("audit", "--rpc", rpc, "--genesis", os.path.join(network.directory, "genesis.json"),
                         "--json")
        assert online.returncode == 0 and json.loads(online.stdout)["intact"] is True, online.stdout + online.stderr
        locked = run_cli("audit", "--home", network.home(0))
        assert locked.returncode == 2  # the running node holds the store's lock (docs/audit.md)
        assert _stop(process, signal.SIGINT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    audited = run_cli("audit", "--home", network.home(0), "--json")
    assert audited.returncode == 0, audited.stdout + audited.stderr
    report = json.loads(audited.stdout)
    assert report["intact"] is True and report["height"] >= 1
    # The whole directory, copied elsewhere, still runs (same ports: the original is stopped).
    copied = tmp_path / "elsewhere"
    shutil.copytree(network.directory, copied)
    shutil.rmtree(network.directory)
    process = subprocess.Popen(ledger_cmd("node", "--home", str(copied / "node0")), cwd=ROOT, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        assert wait_status(rpc, process)["height"] == report["height"]
        status, answer = http("GET", f"{rpc}/v1/txs/{tx_id}")
        assert status == 200 and answer["status"] == "committed"
        assert _stop(process, signal.SIGTERM) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert run_cli("audit", "--home", str(copied / "node0")).returncode == 0
    assert run_cli("audit", "--home", str(tmp_path / "nowhere"), "--json").returncode == 2


def test_keygen_writes_a_contract_key_file(tmp_path):
    """Section 7: `ledger keygen --out FILE` writes "a new key file"; section 5: key files are JSON
    `{"public_key": hex, "secret_key": hex}` (secret = 32-byte seed), mode 0600."""
    path = tmp_path / "k.json"
    result = run_cli("keygen", "--out", str(path))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    data = json.loads(path.read_text())
    assert set(data) == {"public_key", "secret_key"}
    seed = bytes.fromhex(data["secret_key"])
    assert len(seed) == 32 and bytes(nacl.signing.SigningKey(seed).verify_key).hex() == data["public_key"]
    assert HEX64.fullmatch(data["public_key"]) and HEX64.fullmatch(data["secret_key"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_devnet_up_prints_every_rpc_address_and_stops_every_node(tmp_path, sig):
    """Section 7: `ledger devnet up [--validators N] [--dir DIR] [--base-port P]` "makes the network if
    DIR has none, starts every node, waits until they are connected, prints each node's RPC address,
    and stops them all on SIGINT/SIGTERM"."""
    base = free_base_port(4)
    directory = tmp_path / "devnet"
    process = subprocess.Popen(ledger_cmd("devnet", "up", "--validators", "4", "--dir", str(directory),
                                          "--base-port", str(base)),
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.time() + 60
        while len([line for line in lines if "RPC http://" in line]) < 4 and time.time() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
        addresses = re.findall(r"http://127\.0\.0\.1:(\d+)", "".join(lines))
        assert sorted(map(int, addresses)) == [base + i for i in range(4)], lines
        assert (directory / "genesis.json").exists()
        for i in range(4):
            status, body = http("GET", f"http://127.0.0.1:{base + i}/v1/status", timeout=5)
            assert status == 200 and body["node"] == f"node{i}"
            assert all(p["connected"] for p in body["peers"]), body
        process.send_signal(sig)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    deadline = time.time() + 5
    for port in [base + i for i in range(4)] + [base + 100 + i for i in range(4)]:
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) != 0:
                    break
            assert time.time() < deadline, f"port {port} still served after devnet stopped"
            time.sleep(0.1)
