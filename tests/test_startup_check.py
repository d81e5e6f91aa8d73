"""A node refuses to start on a store whose own chain is inconsistent, with a message that
says what is wrong and how to recover, and exits instead of crash-looping; an intact store
made elsewhere starts and serves its chain."""
import subprocess

import plyvel
import pytest

from ledger import codec
from ledger.store import HEADER, height_key
from tests.chainmaker import make_chain
from tests.netutil import ROOT, ledger_cmd

pytestmark = pytest.mark.slow


def start_node(home: str) -> subprocess.CompletedProcess:
    """Run `ledger node` on a store it must refuse: it exits by itself."""
    return subprocess.run(ledger_cmd("node", "--home", home), cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.fixture
def chain(tmp_path):
    return make_chain(str(tmp_path / "net"), blocks=4, txs_per_block=5, validators=1)


def tamper(chain, action) -> None:
    db = plyvel.DB(chain.data_dir)
    try:
        action(db)
    finally:
        db.close()


@pytest.mark.parametrize("name,action,expected", [
    ("missing header", lambda db: db.delete(height_key(HEADER, 2)), "block 2 is missing"),
    ("flipped header byte", lambda db: db.put(height_key(HEADER, 3), bytes([db.get(height_key(HEADER, 3))[0]])
                                              + bytes([db.get(height_key(HEADER, 3))[1] ^ 1])
                                              + db.get(height_key(HEADER, 3))[2:]), "height 3"),
    ("tip record", lambda db: db.put(b"mtip", codec.encode({"height": 9, "hash": b"\x00" * 32,
                                                            "state_root": b"\x00" * 32, "time": 1})), "tip record"),
    ("another genesis", lambda db: db.put(b"mgenesis", b"\x01" * 32), "another genesis"),
])
def test_inconsistent_store_is_refused_with_a_recovery_hint(chain, name, action, expected):
    tamper(chain, action)
    result = start_node(chain.home)
    assert result.returncode == 2, (name, result.returncode, result.stderr[-2000:])
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    if name != "another genesis":
        assert "re-syncs" in result.stderr and "ledger audit" in result.stderr


def test_intact_store_starts(chain):
    process = subprocess.Popen(ledger_cmd("node", "--home", chain.home), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        for line in process.stdout:  # the node prints "<name> up: ..." once it listens
            seen.append(line)
            if " up: " in line or len(seen) > 200:
                break
        assert "node0 up" in seen[-1] and "height 4" in seen[-1], "".join(seen)
    finally:
        process.terminate()
        assert process.wait(timeout=20) == 0  # SIGTERM stops it cleanly
