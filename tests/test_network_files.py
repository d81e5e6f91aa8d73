"""`ledger net init`: genesis, keys (mode 0600), configs; --public-keys; --issuer; copying DIR."""
import json
import os
import shutil
import stat
import subprocess

from ledger.crypto import KeyPair
from ledger.network import load_config, load_genesis
from tests.netutil import ROOT, ledger_cmd


def run(*args):
    return subprocess.run(ledger_cmd(*args), cwd=ROOT, capture_output=True, text=True)


def test_init_layout_and_defaults(tmp_path):
    directory = tmp_path / "net"
    result = run("net", "init", "--validators", "4", "--dir", str(directory), "--issuer", "EUR=BANK3")
    assert result.returncode == 0, result.stderr
    genesis = json.loads((directory / "genesis.json").read_text())
    assert [v["name"] for v in genesis["validators"]] == ["node0", "node1", "node2", "node3"]
    assert [m["id"] for m in genesis["members"]] == ["BANK0", "BANK1", "BANK2", "BANK3"]
    assert genesis["issuers"]["USD"] == "BANK0" and genesis["issuers"]["JPY"] == "BANK0"
    assert genesis["issuers"]["EUR"] == "BANK3" and genesis["issuers"]["GBP"] == "BANK2"
    assert genesis["params"] == {"max_clock_drift_ms": 5000, "max_block_txs": 10000, "max_block_bytes": 8388608}
    for i in range(4):
        key_file = directory / f"node{i}" / "node_key.json"
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
        assert KeyPair.load(str(key_file)).public_key.hex() == genesis["validators"][i]["public_key"]
        admin = KeyPair.load(str(directory / "keys" / f"BANK{i}.json"))
        assert admin.public_key.hex() == genesis["members"][i]["admin_key"]
    config = load_config(str(directory / "node2"))
    assert (config.rpc_port, config.p2p_port) == (7702, 7802)
    assert [p.name for p in config.peers] == ["node0", "node1", "node3"]
    # The directory works as a whole when copied elsewhere.
    copied = tmp_path / "elsewhere"
    shutil.copytree(directory, copied)
    moved = load_config(str(copied / "node1"))
    assert load_genesis(moved.genesis_path) == genesis
    assert run("net", "init", "--dir", str(directory)).returncode == 2  # never overwrites a network


def test_init_from_public_keys_writes_no_secrets(tmp_path):
    entries = []
    for i in range(4):
        node, admin = KeyPair.generate(), KeyPair.generate()
        entries.append({"name": f"v{i}", "member": f"B{i}", "public_key": node.public_key.hex(),
                        "admin_key": admin.public_key.hex()})
    listing = tmp_path / "keys.json"
    listing.write_text(json.dumps(entries))
    directory = tmp_path / "net"
    result = run("net", "init", "--dir", str(directory), "--public-keys", str(listing), "--chain-id", "banks")
    assert result.returncode == 0, result.stderr
    genesis = json.loads((directory / "genesis.json").read_text())
    assert genesis["chain_id"] == "banks"
    assert [v["public_key"] for v in genesis["validators"]] == [e["public_key"] for e in entries]
    assert not any(name.endswith("key.json") for _, _, files in os.walk(directory) for name in files)
    assert not os.listdir(directory / "keys")
    assert load_config(str(directory / "v0")).name == "v0"


def test_config_examples_load_and_agree(tmp_path):
    """configs/ holds what a bank edits; both examples must stay usable as they are."""
    listing = os.path.join(ROOT, "configs", "public-keys.example.json")
    directory = tmp_path / "net"
    result = run("net", "init", "--dir", str(directory), "--public-keys", listing)
    assert result.returncode == 0, result.stderr
    genesis = load_genesis(str(directory / "genesis.json"))
    home = directory / "node1"
    shutil.copy(os.path.join(ROOT, "configs", "node.example.toml"), home / "config.toml")
    config = load_config(str(home))
    assert config.name == "node1" and (config.rpc_port, config.p2p_port) == (7701, 7801)
    assert load_genesis(config.genesis_path) == genesis
    keys = {v["name"]: v["public_key"] for v in genesis["validators"]}
    assert {p.name: p.public_key.hex() for p in config.peers} == {n: k for n, k in keys.items() if n != "node1"}


def test_genesis_ids_follow_the_contracts_patterns_exactly():
    """One rule for ids (ledger.bodies), matched whole: a trailing newline is not an id."""
    from ledger.network import genesis_problem

    directory_genesis = {
        "chain_id": "c", "genesis_time": 1, "validators": [{"name": "n0", "member": "B0", "public_key": "11" * 32}],
        "members": [{"id": "B0", "name": "Bank", "admin_key": "22" * 32}], "issuers": {"USD": "B0"},
    }
    assert genesis_problem(directory_genesis) is None
    for members, issuers in (([{"id": "B0\n", "name": "Bank", "admin_key": "22" * 32}], {"USD": "B0\n"}),
                             (directory_genesis["members"], {"USD\n": "B0"})):
        assert genesis_problem({**directory_genesis, "members": members, "issuers": issuers}) is not None


def test_init_refuses_an_unreadable_public_keys_file_and_takes_several_issuers_at_once(tmp_path):
    missing = run("net", "init", "--dir", str(tmp_path / "a"), "--public-keys", str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "error: --public-keys" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "bad.json").write_text("{not json")
    bad = run("net", "init", "--dir", str(tmp_path / "b"), "--public-keys", str(tmp_path / "bad.json"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    made = run("net", "init", "--dir", str(tmp_path / "c"), "--issuer", "USD=BANK1", "EUR=BANK2", "--issuer", "GBP=BANK3")
    assert made.returncode == 0, made.stderr
    issuers = json.loads((tmp_path / "c" / "genesis.json").read_text())["issuers"]
    assert (issuers["USD"], issuers["EUR"], issuers["GBP"], issuers["JPY"]) == ("BANK1", "BANK2", "BANK3", "BANK0")
