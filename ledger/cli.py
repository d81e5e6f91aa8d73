"""The `ledger` command line (contract section 7)."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from ledger import network


def _http_json(url: str, *, data: bytes | None = None, content_type: str = "application/json", timeout: float = 30):
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, {"error": {"code": "http", "message": body.decode(errors="replace")}}


# ---------------------------------------------------------------------- net init
def cmd_net_init(args) -> int:
    issuers = {}
    for item in args.issuer or []:
        ccy, sep, member = item.partition("=")
        if not sep:
            print(f"--issuer {item!r}: write CCY=MEMBER", file=sys.stderr)
            return 2
        issuers[ccy] = member
    try:
        genesis = network.init_network(args.dir, validators=args.validators, chain_id=args.chain_id,
                                       base_port=args.base_port, host=args.host, issuers=issuers,
                                       public_keys_file=args.public_keys)
    except network.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote a {len(genesis['validators'])}-validator network for chain {genesis['chain_id']} in {args.dir}")
    return 0


# ---------------------------------------------------------------------- node
def cmd_node(args) -> int:
    from ledger.node import Node, StartupError
    from ledger.rpc import RpcServer

    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if sys.platform != "win32":
        import uvloop  # a faster event loop (a dependency off Windows); the node is event-loop bound

        uvloop.install()

    async def run() -> int:
        try:
            node = Node(args.home)
        except StartupError as exc:
            print(f"error: cannot start the node: {exc}", file=sys.stderr)
            return 2
        rpc = RpcServer(node)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await node.start()
            await rpc.start(node.config.rpc_host, node.config.rpc_port)
        except OSError as exc:
            print(f"error: cannot listen: {exc}", file=sys.stderr)
            await node.stop()
            return 2
        print(f"{node.config.name} up: RPC http://{node.config.rpc_host}:{node.config.rpc_port} "
              f"peer port {node.config.p2p_port} height {node.tip.height}", flush=True)
        stopped = asyncio.ensure_future(stop.wait())
        while not stopped.done() and not node.fatal_error:
            await asyncio.wait({stopped}, timeout=0.5)  # wake up to notice a node that halted
        stopped.cancel()
        await rpc.stop()
        await node.stop()
        if node.fatal_error:
            print(f"error: node halted: {node.fatal_error}", file=sys.stderr)
            return 1
        return 0

    profile_dir = os.environ.get("LEDGER_PROFILE_DIR")
    if not profile_dir:
        return asyncio.run(run())
    # Developer aid: profile the whole node run (cProfile), one file per node.
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        return asyncio.run(run())
    finally:
        profiler.disable()
        profiler.dump_stats(os.path.join(profile_dir, os.path.basename(os.path.normpath(args.home)) + ".prof"))


# ---------------------------------------------------------------------- devnet
def _node_status(config) -> dict | None:
    """A node's /v1/status, or None while it is not (yet) answering."""
    try:
        _, status = _http_json(f"http://{config.rpc_host}:{config.rpc_port}/v1/status", timeout=2)
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def cmd_devnet_up(args) -> int:
    directory = args.dir
    if not os.path.exists(os.path.join(directory, "genesis.json")):
        try:
            network.init_network(directory, validators=args.validators, base_port=args.base_port)
        except network.ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"made a {args.validators}-validator network in {directory}")
    genesis = network.load_genesis(os.path.join(directory, "genesis.json"))
    names = [v["name"] for v in genesis["validators"]]
    configs = [network.load_config(os.path.join(directory, name)) for name in names]
    logs_dir = os.path.join(directory, "logs")
    os.makedirs(logs_dir, exist_ok=True)
    processes = []
    stopping = False

    def stop_all(*_):
        nonlocal stopping
        stopping = True

    # Before any node starts: a signal at any moment from here on stops every started node.
    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)
    try:
        for config in configs:
            with open(os.path.join(logs_dir, f"{config.name}.log"), "ab") as log_file:  # the child keeps its copy
                processes.append(subprocess.Popen([sys.executable, "-m", "ledger.cli", "node", "--home", config.home],
                                                  stdout=log_file, stderr=subprocess.STDOUT))
        deadline = time.time() + 60
        ready: set[str] = set()
        while not stopping and time.time() < deadline and len(ready) < len(configs):
            for config, process in zip(configs, processes):
                if process.poll() is not None:
                    print(f"error: {config.name} exited ({process.returncode}); see {logs_dir}/{config.name}.log",
                          file=sys.stderr)
                    return 1
                status = _node_status(config)
                if status is not None and all(p.get("connected") for p in status.get("peers", [])):
                    ready.add(config.name)
            time.sleep(0.2)
        if len(ready) < len(configs) and not stopping:
            print("error: the nodes did not connect within 60 s; see the logs in " + logs_dir, file=sys.stderr)
            return 1
        if not stopping:
            print(f"devnet of {len(configs)} validators up (chain {genesis['chain_id']}); logs in {logs_dir}")
            for config in configs:
                print(f"  {config.name}: RPC http://{config.rpc_host}:{config.rpc_port}")
            print("keys of the member banks are in " + os.path.join(directory, "keys") + "; Ctrl-C stops the network",
                  flush=True)
        reported: set[str] = set()
        while not stopping:
            for config, process in zip(configs, processes):
                if process.poll() is not None and config.name not in reported:
                    reported.add(config.name)
                    print(f"warning: {config.name} exited ({process.returncode}); see {logs_dir}/{config.name}.log",
                          file=sys.stderr, flush=True)
            time.sleep(0.5)
            if all(p.poll() is not None for p in processes):
                return 1
        return 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        print("devnet stopped")


# ---------------------------------------------------------------------- keys and transactions
def cmd_keygen(args) -> int:
    from ledger.crypto import KeyPair

    if os.path.exists(args.out):
        print(f"error: {args.out} exists; not overwriting a key", file=sys.stderr)
        return 2
    pair = KeyPair.generate()
    pair.save(args.out)
    print(pair.public_key.hex())
    return 0


def cmd_tx(args) -> int:
    from ledger import txbuilder
    from ledger.crypto import KeyPair
    from ledger.tx import make_tx

    now_ms = int(time.time() * 1000)
    try:
        body = txbuilder.build_body(args.type, args.fields, now_ms)
        keys = [KeyPair.load(path) for path in args.key]
    except (txbuilder.UsageError, OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rpc = args.rpc.rstrip("/")
    chain = args.chain
    if chain is None:
        try:
            _, genesis = _http_json(f"{rpc}/v1/genesis", timeout=10)
            chain = genesis["chain_id"]
        except (OSError, KeyError, TypeError) as exc:
            print(f"error: cannot read the chain id from {rpc}: {exc}", file=sys.stderr)
            return 2
    raw = make_tx(chain, args.type, body, keys, nonce=args.nonce if args.nonce is not None else time.time_ns() % 2**63,
                  expires=now_ms + args.ttl * 1000)
    if not args.json:
        print(txbuilder.describe(args.type, body, currency_hint=next(
            (w.split("=", 1)[1] for w in args.fields if w.startswith("currency=")), None)))
    url = f"{rpc}/v1/txs" + ("?wait=commit&timeout=30" if args.wait else "")
    try:
        status, answer = _http_json(url, data=raw, content_type="application/msgpack", timeout=40)
    except OSError as exc:
        print(f"error: cannot reach {rpc}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(answer, indent=2))
    elif "error" in answer:
        print(f"refused ({status}): {answer['error']['code']}: {answer['error']['message']}")
    elif answer.get("status") == "committed":
        result = answer["result"]
        print(f"  tx {answer['tx_id']}\n  committed at height {answer['height']} (index {answer['index']}): "
              f"{result['code']} - {result['message']}")
    else:
        print(f"  tx {answer['tx_id']}\n  pending; see {rpc}/v1/txs/{answer['tx_id']}")
    if "error" in answer:
        return 1
    if answer.get("status") == "committed" and answer["result"]["code"] != "ok":
        return 1
    return 0


def cmd_verify_proof(args) -> int:
    from ledger.proof import ProofError, verify_proof

    try:
        with open(args.file) as handle:
            proof = json.load(handle)
        genesis = network.load_genesis(args.genesis)
    except (OSError, ValueError, network.ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        found = verify_proof(proof, genesis)
    except ProofError as exc:
        print(f"proof INVALID: {exc}")
        return 1
    print(f"proof valid: tx {found['tx_id']} is at height {found['height']} index {found['index']} "
          f"with result {found['code']}, committed by a quorum of the genesis validators")
    return 0


def cmd_audit(args) -> int:
    from ledger import audit

    return audit.run(args)


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ledger", description="Permissioned PBFT ledger node for banks")
    sub = parser.add_subparsers(dest="command", required=True)

    net = sub.add_parser("net", help="network files").add_subparsers(dest="net_command", required=True)
    init = net.add_parser("init", help="write genesis, keys and node configs (contract section 5)")
    init.add_argument("--validators", type=int, default=4)
    init.add_argument("--dir", required=True)
    init.add_argument("--chain-id", default="ledger-devnet")
    init.add_argument("--base-port", type=int, default=7700)
    init.add_argument("--host", default="127.0.0.1")
    init.add_argument("--issuer", action="extend", nargs="+", metavar="CCY=MEMBER",
                      help="currency issuer, replacing the default for that currency (repeatable)")
    init.add_argument("--public-keys", metavar="FILE", help="build genesis from public keys only")
    init.set_defaults(func=cmd_net_init)

    node = sub.add_parser("node", help="run one node in the foreground")
    node.add_argument("--home", required=True)
    node.add_argument("--log-level", default="info")
    node.set_defaults(func=cmd_node)

    devnet = sub.add_parser("devnet", help="a local network").add_subparsers(dest="devnet_command", required=True)
    up = devnet.add_parser("up", help="make (if needed) and start a local network")
    up.add_argument("--validators", type=int, default=4)
    up.add_argument("--dir", default="devnet")
    up.add_argument("--base-port", type=int, default=7700)
    up.set_defaults(func=cmd_devnet_up)

    audit = sub.add_parser("audit", help="check a chain's integrity (contract section 8)")
    source = audit.add_mutually_exclusive_group(required=True)
    source.add_argument("--home", help="a stopped node's directory (offline)")
    source.add_argument("--rpc", help="a node's RPC URL (online; needs --genesis)")
    audit.add_argument("--genesis", help="the genesis file to trust (with --rpc)")
    audit.add_argument("--json", action="store_true")
    audit.set_defaults(func=cmd_audit)

    keygen = sub.add_parser("keygen", help="write a new key file")
    keygen.add_argument("--out", required=True)
    keygen.set_defaults(func=cmd_keygen)

    tx = sub.add_parser("tx", help="build, sign and submit a transaction",
                        description="Fields are field=value words; amounts in major units (12.50), times as ISO 8601 "
                                    "or +2h, keys as hex or a key file, hashes as hex or @file.")
    tx.add_argument("type")
    tx.add_argument("fields", nargs="*", metavar="field=value")
    tx.add_argument("--key", action="append", required=True, help="a signer's key file (repeat, in signer order)")
    tx.add_argument("--rpc", default="http://127.0.0.1:7700")
    tx.add_argument("--wait", action="store_true", help="wait until committed")
    tx.add_argument("--chain", help="chain id (default: ask the node)")
    tx.add_argument("--nonce", type=int)
    tx.add_argument("--ttl", type=int, default=600, help="seconds until the transaction expires")
    tx.add_argument("--json", action="store_true")
    tx.set_defaults(func=cmd_tx)

    verify = sub.add_parser("verify-proof", help="check an inclusion proof holding only genesis")
    verify.add_argument("file")
    verify.add_argument("--genesis", required=True)
    verify.set_defaults(func=cmd_verify_proof)
    return parser


EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a tool that SIGPIPE ended


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        # The reader went away (`ledger audit ... | head`): nobody is left to tell, so end
        # quietly as other Unix tools do, with no traceback; point stdout at /dev/null so
        # the interpreter's final flush cannot raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
