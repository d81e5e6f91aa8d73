"""The trade finance demo end to end against four real `ledger node` processes.

It runs the very code of `scripts/demo_trade.py` (imported, so the demo and this test
are one implementation): accounts at four banks, minting by the genesis issuers, an FX
payment-versus-payment, and a letter of credit from issue through a refused
presentation and a re-presentation to payment against a bill of lading. It checks the
state between steps on the node the demo talks to, then the final letter of credit,
documents, accounts and transaction statuses on every node (each must give the same
answers), and money conservation per currency. Finally it runs the demo's command line
a second time against another node of the same network: the demo is rerunnable.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys

import pytest

from tests.contract_client import http
from tests.netutil import ROOT, Network

pytestmark = pytest.mark.slow

DEMO_PATH = os.path.join(ROOT, "scripts", "demo_trade.py")


def _load_demo():
    spec = importlib.util.spec_from_file_location("demo_trade", DEMO_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["demo_trade"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


demo_trade = _load_demo()

LC_HISTORY = ["lc.issue", "lc.advise", "lc.present", "lc.examine", "lc.present", "lc.examine"]
# The story in minor units, written out independently of the demo's constants
# (default genesis issuers with 4 validators: BANK0 USD, BANK1 EUR, BANK2 GBP).
USD_ISSUED, EUR_ISSUED, GBP_ISSUED = 120_000_000, 200_000_000, 50_000_000
FX_USD, FX_EUR = 108_500_000, 100_000_000
LC_EUR, FREIGHT_EUR, REDEEMED_EUR = 95_000_000, 1_800_000, 50_000_000
DEMO_NODE = 1  # the node the demo submits to; the checks read every node


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    network = Network(str(tmp_path_factory.mktemp("trade") / "net"), validators=4)
    try:
        network.start_connected()
        yield network
    finally:
        network.stop_all()


def get(net: Network, i: int, path: str) -> dict:
    status, body = http("GET", f"{net.rpc(i)}{path}", timeout=10)
    assert status == 200, (i, path, status, body)
    return body


class Snapshots:
    """after_step hook: what the LC and the importer's account look like after each step."""

    def __init__(self, net: Network):
        self.net = net
        self.lc: dict[str, dict] = {}
        self.importer: dict[str, dict] = {}

    def __call__(self, step, run) -> None:
        assert step.code == "ok"
        if run.lc_id and step.tx_type.startswith("lc."):
            self.lc[step.key] = get(self.net, DEMO_NODE, f"/v1/lcs/{run.lc_id}")
            self.importer[step.key] = get(self.net, DEMO_NODE, f"/v1/accounts/{run.account('importer')}")


def node_logs(net: Network) -> str:
    return "\n".join(f"--- node{i} log (tail) ---\n{net.log(i)[-2000:]}" for i in range(net.validators))


def test_trade_finance_lifecycle_on_four_nodes(net):
    lines: list[str] = []
    snapshots = Snapshots(net)
    try:
        run = demo_trade.run_demo(net.rpc(DEMO_NODE), net.directory, run_id="e2e1", out=lines.append,
                                  after_step=snapshots)
    except demo_trade.StepFailed as exc:
        pytest.fail(f"{exc}\n" + "\n".join(lines[-8:]) + "\n" + node_logs(net))
    output = "\n".join(lines)
    importer, exporter = run.account("importer"), run.account("exporter")
    fxdesk, carrier = run.account("fxdesk"), run.account("carrier")
    bill, invoice1, invoice2 = run.docs["bill_of_lading"], run.docs["invoice-1"], run.docs["invoice-2"]
    assert (importer, exporter, fxdesk, carrier) == ("BANK0:importer-e2e1", "BANK1:exporter-e2e1",
                                                     "BANK2:fxdesk-e2e1", "BANK3:carrier-e2e1")
    assert run.lc_id == "LC-e2e1"
    assert len(run.steps) == 19 and all(step.code == "ok" for step in run.steps)

    # Between steps: the reservation is taken at issue and kept through the refusal.
    assert [snapshots.lc[key]["status"] for key in ("lc.issue", "lc.advise", "lc.present-1", "lc.examine-refuse",
                                                    "lc.present-2", "lc.examine-accept")] == \
        ["issued", "advised", "presented", "refused", "presented", "paid"]
    for key in ("lc.issue", "lc.advise", "lc.present-1", "lc.examine-refuse", "lc.present-2"):
        assert snapshots.importer[key]["held"] == {"EUR": LC_EUR}, key
        assert snapshots.importer[key]["balances"]["EUR"] == FX_EUR - LC_EUR, key
    assert [d["hash"] for d in snapshots.lc["lc.present-1"]["presented"]] == [invoice1, bill]
    assert snapshots.lc["lc.examine-accept"]["presented"] == [{"type": "invoice", "hash": invoice2},
                                                              {"type": "bill_of_lading", "hash": bill}]

    # Every node has committed the demo's last block; then every node must give the same answers.
    last_height = run.steps[-1].height
    for i in range(net.validators):
        net.wait_height(i, last_height)
    paths = [f"/v1/lcs/{run.lc_id}", f"/v1/docs/{bill}", f"/v1/docs/{invoice1}", f"/v1/docs/{invoice2}"]
    paths += [f"/v1/accounts/{a}" for a in (importer, exporter, fxdesk, carrier)]
    paths += [f"/v1/txs/{step.tx_id}" for step in run.steps]
    answers = {path: get(net, DEMO_NODE, path) for path in paths}
    for i in range(net.validators):
        for path in paths:
            assert get(net, i, path) == answers[path], f"node{i} differs on {path}"

    steps = {step.key: step for step in run.steps}
    for step in run.steps:
        tx = answers[f"/v1/txs/{step.tx_id}"]
        assert tx["status"] == "committed" and tx["result"]["code"] == "ok" and tx["height"] == step.height

    lc = answers[f"/v1/lcs/{run.lc_id}"]
    assert lc["status"] == "paid"
    assert (lc["applicant"], lc["beneficiary"], lc["issuing_bank"], lc["advising_bank"]) == \
        (importer, exporter, "BANK0", "BANK1")
    assert (lc["currency"], lc["amount"], lc["documents"]) == ("EUR", LC_EUR, ["bill_of_lading", "invoice"])
    assert [entry["type"] for entry in lc["history"]] == LC_HISTORY
    history_steps = ["lc.issue", "lc.advise", "lc.present-1", "lc.examine-refuse", "lc.present-2",
                     "lc.examine-accept"]
    assert [(e["height"], e["tx_id"]) for e in lc["history"]] == \
        [(steps[k].height, steps[k].tx_id) for k in history_steps]

    # Documents against payment: the bill of lading's title passed to the applicant with the payment.
    payment = steps["lc.examine-accept"]
    registered = steps["doc.register-bill_of_lading"]
    bill_view = answers[f"/v1/docs/{bill}"]
    assert (bill_view["type"], bill_view["holder"]) == ("bill_of_lading", importer)
    assert bill_view["history"] == [
        {"height": registered.height, "holder": exporter, "tx_id": registered.tx_id},
        {"height": payment.height, "holder": importer, "tx_id": payment.tx_id},
    ]
    assert bill_view["meta"]["number"] == "BL-e2e1" and bill_view["meta"]["carrier"] == carrier
    for digest, key in ((invoice1, "doc.register-invoice-1"), (invoice2, "doc.register-invoice-2")):
        invoice = answers[f"/v1/docs/{digest}"]  # invoices are not title documents: they stay
        assert (invoice["type"], invoice["holder"]) == ("invoice", exporter)
        assert invoice["history"] == [{"height": steps[key].height, "holder": exporter, "tx_id": steps[key].tx_id}]
    # The anchored hash is the SHA-256 of the document file the demo wrote.
    with open(os.path.join(run.doc_dir, "bill-of-lading.txt"), "rb") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == bill

    accounts = {a: answers[f"/v1/accounts/{a}"] for a in (importer, exporter, fxdesk, carrier)}
    assert accounts[importer]["balances"] == {"EUR": FX_EUR - LC_EUR, "USD": USD_ISSUED - FX_USD}
    assert accounts[importer]["held"] == {}  # the reservation was paid out
    assert accounts[exporter]["balances"] == {"EUR": LC_EUR - FREIGHT_EUR - REDEEMED_EUR}
    assert accounts[fxdesk]["balances"] == {"EUR": EUR_ISSUED - FX_EUR, "GBP": GBP_ISSUED, "USD": FX_USD}
    assert accounts[carrier]["balances"] == {"EUR": FREIGHT_EUR}
    assert all(view["held"] == {} and not view["frozen"] for view in accounts.values())
    assert accounts[importer]["owner"] == "BANK0" and accounts[carrier]["owner"] == "BANK3"

    # Money conservation per currency: available + held over the demo's accounts == issued - redeemed.
    totals: dict[str, int] = {}
    for view in accounts.values():
        for amounts in (view["balances"], view["held"]):
            for currency, value in amounts.items():
                totals[currency] = totals.get(currency, 0) + value
    assert totals == {"USD": USD_ISSUED, "EUR": EUR_ISSUED - REDEEMED_EUR, "GBP": GBP_ISSUED}
    for i in (0, 3):
        assert demo_trade.money_check(net.rpc(i), run) == {c: (v, v) for c, v in totals.items()}

    # The demo's output: readable amounts and dates, result and height, and where to look.
    assert "950,000.00 EUR" in output and "1,085,000.00 USD" in output
    assert f"result:    ok at height {payment.height} (block time " in output
    assert f"curl -s {net.rpc(DEMO_NODE)}/v1/lcs/{run.lc_id}" in output
    assert f"curl -s {net.rpc(DEMO_NODE)}/v1/txs/{payment.tx_id}" in output
    assert f"curl -s {net.rpc(DEMO_NODE)}/v1/docs/{bill}" in output
    assert f"title now with {importer}" in output

    # The command line, again on the same network through another node: fresh ids, exit 0.
    second = subprocess.run([sys.executable, DEMO_PATH, "--dir", net.directory, "--rpc", net.rpc(2)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr + node_logs(net)
    assert "19 steps, all ok" in second.stdout
    assert "money check EUR: accounts hold 1,500,000.00 EUR, issued - redeemed = 1,500,000.00 EUR: ok" \
        in second.stdout


def test_demo_refuses_keys_of_another_network(net, tmp_path):
    """--dir and --rpc of different networks: exit 2 before writing or submitting anything."""
    other = tmp_path / "other"
    subprocess.run([sys.executable, "-m", "ledger.cli", "net", "init", "--validators", "4", "--dir", str(other),
                    "--chain-id", "test-chain"], cwd=ROOT, check=True, capture_output=True)
    result = subprocess.run([sys.executable, DEMO_PATH, "--dir", str(other), "--rpc", net.rpc(0)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "not BANK0's current admin key" in result.stderr
    assert not (other / "demo-keys").exists()
    assert get(net, 0, "/v1/status")["mempool_size"] == 0
