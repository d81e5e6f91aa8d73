"""The RPC of contract section 6 against a real one-validator node: every refusal is a 4xx
with the contract's error object, every lookup has the contract's shape."""
import asyncio
import json
import os
import time
import urllib.request

import msgpack
import pytest

from tests.contract_client import Key, canonical, http, sign_tx, submit_batch
from tests.netutil import Network

pytestmark = pytest.mark.slow


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    network = Network(str(tmp_path_factory.mktemp("rpc") / "net"), validators=1)
    network.start(0)
    network.wait_rpc(0)
    bank = Key.from_file(os.path.join(network.directory, "keys", "BANK0.json"))
    try:
        yield network, network.rpc(0), bank
    finally:
        network.stop_all()


_nonce = iter(range(1, 10**9))


def make(bank, tx_type="account.open", body=None, keys=None, chain="test-chain", expires=None):
    body = body if body is not None else {"id": f"BANK0:acct{next(_nonce)}", "owner": "BANK0", "key": bank.public}
    return sign_tx(chain, tx_type, body, keys or [bank], next(_nonce), expires or now_ms() + 600_000)


def post(rpc, raw, path="/v1/txs"):
    return http("POST", f"{rpc}{path}", raw, "application/msgpack")


def assert_error(answer, status, code, expected_status, expected_code):
    assert status == expected_status, (status, answer)
    assert answer["error"]["code"] == expected_code and answer["error"]["message"], answer


def test_submit_and_wait_commit_json_body(node):
    _, rpc, bank = node
    raw, tx_id = make(bank)
    status, answer = http("POST", f"{rpc}/v1/txs?wait=commit", json.dumps({"tx": raw.hex()}).encode())
    assert status == 200, answer
    assert answer["tx_id"] == tx_id and answer["status"] == "committed" and answer["result"]["code"] == "ok"
    status, again = http("GET", f"{rpc}/v1/txs/{tx_id}")
    assert status == 200 and again["height"] == answer["height"] and again["index"] == answer["index"]
    status, dup = post(rpc, raw)
    assert_error(dup, status, dup.get("error", {}).get("code"), 409, "duplicate")


@pytest.mark.parametrize("mutate,status,code", [
    (lambda raw: raw + b"\x00", 400, "non_canonical"),
    (lambda raw: raw[:-3], 400, "bad_encoding"),
    (lambda raw: b"", 400, "bad_encoding"),
    (lambda raw: canonical({"tx": 1, "sigs": []}), 400, "invalid_tx"),
])
def test_submission_refusals(node, mutate, status, code):
    _, rpc, bank = node
    raw, _ = make(bank)
    got_status, answer = post(rpc, mutate(raw))
    assert_error(answer, got_status, None, status, code)


def test_wrong_chain_expiry_signature_body(node):
    _, rpc, bank = node
    raw, _ = make(bank, chain="other-chain")
    status, answer = post(rpc, raw)
    assert_error(answer, status, None, 400, "wrong_chain")
    raw, _ = make(bank, expires=now_ms() - 1)
    status, answer = post(rpc, raw)
    assert_error(answer, status, None, 400, "expired")
    raw, _ = make(bank, expires=now_ms() + 25 * 3600 * 1000)
    status, answer = post(rpc, raw)
    assert_error(answer, status, None, 400, "expiry_too_far")
    signed = msgpack.unpackb(make(bank)[0], raw=False)
    signed["sigs"][0] = bytes(64)
    status, answer = post(rpc, canonical(signed))
    assert_error(answer, status, None, 400, "bad_signature")
    raw, _ = make(bank, body={"id": "x", "owner": "BANK0"})  # key missing
    status, answer = post(rpc, raw)
    assert_error(answer, status, None, 422, "invalid_body")
    raw, _ = make(bank, tx_type="no.such.type")
    status, answer = post(rpc, raw)
    assert_error(answer, status, None, 400, "invalid_tx")


def test_too_large_bodies(node):
    _, rpc, _ = node
    status, answer = post(rpc, b"\x00" * (256 * 1024 + 1))
    assert_error(answer, status, None, 413, "too_large")
    status, answer = http("POST", f"{rpc}/v1/txs/batch", json.dumps({"txs": ["00"] * 10_001}).encode())
    assert_error(answer, status, None, 413, "too_large")


@pytest.mark.parametrize("path,body", [
    ("/v1/txs", b'{"tx": ' + b"1" * 5000 + b"}"),          # an integer past Python's digit limit
    ("/v1/txs/batch", b'{"txs": [' + b"9" * 5000 + b"]}"),
    ("/v1/txs", b'{"tx": "\xff"}'),                          # not UTF-8
    ("/v1/txs", b"[" * 100_000),                              # nesting past the recursion limit
])
def test_json_bodies_that_cannot_be_read_are_bad_encoding(node, path, body):
    _, rpc, _ = node
    status, answer = http("POST", rpc + path, body)
    assert_error(answer, status, None, 400, "bad_encoding")


def test_batch_mixed_results(node):
    _, rpc, bank = node
    good, good_id = make(bank)
    bad = good[:-1]
    status, answer = submit_batch(rpc, [good, bad, good])
    assert status == 200
    first, second, third = answer["results"]
    assert first == {"tx_id": good_id, "status": "pending"}
    assert second["error"]["code"] in ("bad_encoding", "non_canonical")
    assert third["error"]["code"] == "duplicate"
    status, answer = http("POST", f"{rpc}/v1/txs/batch", json.dumps({"txs": ["zz"]}).encode())
    assert status == 200 and answer["results"][0]["error"]["code"] == "bad_encoding"
    # JSON entries that are not strings are refused in place, like bad hex.
    status, answer = http("POST", f"{rpc}/v1/txs/batch", json.dumps({"txs": [1, None, {}, good.hex()]}).encode())
    assert status == 200, answer
    assert [r.get("error", {}).get("code") for r in answer["results"]] == ["bad_encoding"] * 3 + ["duplicate"]
    # So are msgpack entries that are not bin (a hex str is not accepted there either).
    body = msgpack.packb([1, good.hex(), None, good], use_bin_type=True)
    status, answer = http("POST", f"{rpc}/v1/txs/batch", body, "application/msgpack")
    assert status == 200, answer
    assert [r.get("error", {}).get("code") for r in answer["results"]] == ["bad_encoding"] * 3 + ["duplicate"]


@pytest.mark.parametrize("path,status,code", [
    ("/v1/txs/" + "ab" * 32, 404, "unknown_tx"),
    ("/v1/txs/nothex", 400, "bad_request"),
    ("/v1/txs/" + "ab" * 32 + "/proof", 404, "unknown_tx"),
    ("/v1/blocks/999999", 404, "unknown_block"),
    ("/v1/blocks/-1", 400, "bad_request"),
    ("/v1/accounts/nobody", 404, "unknown_account"),
    ("/v1/accounts/" + "x" * 65, 400, "bad_request"),
    ("/v1/holds/none", 404, "unknown_hold"),
    ("/v1/lcs/none", 404, "unknown_lc"),
    ("/v1/docs/" + "00" * 32, 404, "unknown_doc"),
    ("/v1/nothing", 404, "not_found"),
    ("/v1/blocks/%C2%B2", 400, "bad_request"),             # "²": a digit to str.isdigit, not to int()
    ("/v1/blocks/%D9%A1", 400, "bad_request"),             # an Arabic-Indic one
    ("/v1/accounts/BANK0%0A", 400, "bad_request"),         # a trailing newline
    ("/v1/txs/" + "ab" * 32 + "%0A", 400, "bad_request"),
    ("/v1/docs/" + "00" * 32 + "%0A", 400, "bad_request"),
])
def test_lookup_errors(node, path, status, code):
    _, rpc, _ = node
    got_status, answer = http("GET", rpc + path)
    assert_error(answer, got_status, None, status, code)


def test_reads_have_contract_shapes(node):
    net, rpc, bank = node
    owner_key = Key(os.urandom(32))
    raw, _ = make(bank, body={"id": "BANK0:shape", "owner": "BANK0", "key": owner_key.public})
    status, _ = http("POST", f"{rpc}/v1/txs?wait=commit", raw, "application/msgpack")
    assert status == 200
    raw, tx_id = make(bank, tx_type="issue", body={"account": "BANK0:shape", "currency": "USD", "amount": 500})
    status, committed = http("POST", f"{rpc}/v1/txs?wait=commit", raw, "application/msgpack")
    assert status == 200 and committed["result"]["code"] == "ok"
    status, account = http("GET", f"{rpc}/v1/accounts/BANK0:shape")
    assert account == {"id": "BANK0:shape", "owner": "BANK0", "key": owner_key.public.hex(), "frozen": False,
                       "balances": {"USD": 500}, "held": {}}
    status, blk = http("GET", f"{rpc}/v1/blocks/{committed['height']}?txs=1")
    assert status == 200 and set(blk) == {"height", "hash", "header", "header_bytes", "tx_ids", "results", "commit", "txs"}
    assert tx_id in blk["tx_ids"] and len(blk["txs"]) == len(blk["tx_ids"]) == blk["header"]["tx_count"]
    assert blk["commit"]["block_hash"] == blk["hash"] and len(blk["commit"]["sigs"]) == 1
    status, proof = http("GET", f"{rpc}/v1/txs/{tx_id}/proof")
    assert status == 200 and proof["code"] == "ok" and proof["height"] == committed["height"]
    status, members = http("GET", f"{rpc}/v1/members")
    assert members == [{"id": "BANK0", "name": net.genesis["members"][0]["name"], "admin_key": bank.public.hex()}]
    status, genesis = http("GET", f"{rpc}/v1/genesis")
    assert genesis == net.genesis
    status, st = http("GET", f"{rpc}/v1/status")
    assert set(st) == {"chain_id", "node", "validator", "height", "last_block_hash", "view", "primary", "peers",
                       "mempool_size", "syncing"}
    assert all(set(peer) == {"name", "connected"} for peer in st["peers"])
    with urllib.request.urlopen(f"{rpc}/metrics") as response:
        assert b"ledger_height" in response.read()


async def test_events_websocket_sends_each_committed_block(node):
    import aiohttp

    _, rpc, bank = node
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{rpc}/v1/events") as ws:
            raw, tx_id = make(bank)
            async with session.post(f"{rpc}/v1/txs", data=raw, headers={"Content-Type": "application/msgpack"}) as response:
                assert response.status == 202
            message = await ws.receive_json(timeout=20)
            while tx_id not in [t["tx_id"] for t in message["txs"]]:
                message = await ws.receive_json(timeout=20)
    assert set(message) == {"height", "hash", "txs"}
    status, block = http("GET", f"{rpc}/v1/blocks/{message['height']}")
    assert block["hash"] == message["hash"]
    assert {"tx_id": tx_id, "code": "ok"} in message["txs"]


async def test_events_subscribers_are_capped(node):
    """Each subscriber costs the node a queue and a write per block: past the cap, 429."""
    import aiohttp

    from ledger.rpc import EVENT_SUBSCRIBERS_MAX

    _, rpc, _ = node
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sockets = [await session.ws_connect(f"{rpc}/v1/events") for _ in range(EVENT_SUBSCRIBERS_MAX)]
        try:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(f"{rpc}/v1/events")
            assert refused.value.status == 429
            async with session.get(f"{rpc}/v1/events") as response:
                assert response.status == 429
                assert (await response.json())["error"]["code"] == "too_many_subscribers"
        finally:
            for ws in sockets:
                await ws.close()
        # The slots come free again.
        for _ in range(50):
            try:
                ws = await session.ws_connect(f"{rpc}/v1/events")
                break
            except aiohttp.WSServerHandshakeError:
                await asyncio.sleep(0.1)
        await ws.close()


def test_ledger_tx_command_submits_and_reports(node, tmp_path):
    import subprocess

    from tests.netutil import ROOT, ledger_cmd

    net, rpc, _ = node
    key_file = str(tmp_path / "carol.json")
    made = subprocess.run(ledger_cmd("keygen", "--out", key_file), cwd=ROOT, capture_output=True, text=True)
    assert made.returncode == 0 and len(made.stdout.strip()) == 64
    bank_key = os.path.join(net.directory, "keys", "BANK0.json")
    result = subprocess.run(ledger_cmd("tx", "account.open", "id=BANK0:carol", "owner=BANK0", f"key={key_file}",
                                       "--key", bank_key, "--rpc", rpc, "--wait"),
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "committed at height" in result.stdout and ": ok" in result.stdout
    result = subprocess.run(ledger_cmd("tx", "issue", "account=BANK0:carol", "currency=JPY", "amount=1500",
                                       "--key", bank_key, "--rpc", rpc, "--wait"),
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "1,500 JPY" in result.stdout, result.stdout + result.stderr
    assert http("GET", f"{rpc}/v1/accounts/BANK0:carol")[1]["balances"] == {"JPY": 1500}
    # A refusal by the ledger is reported and exits non-zero.
    result = subprocess.run(ledger_cmd("tx", "redeem", "account=BANK0:carol", "currency=JPY", "amount=99999",
                                       "--key", key_file, "--rpc", rpc, "--wait"),
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and "insufficient_funds" in result.stdout
