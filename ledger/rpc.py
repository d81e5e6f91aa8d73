"""The node RPC (contract section 6): a thin aiohttp adapter over `Node`.

Every client input is size-limited before it is read whole and validated before use;
every refusal is a 4xx with `{"error": {"code", "message"}}`. A 5xx would mean a bug in
the node, never a client's bad input, and is logged with its traceback; the one 5xx by
design is 503 `unavailable` from a node that halted on a fault of its own (or is
stopping) and so cannot make a submission durable.

A submission is answered "pending" only after the node synced it to its store (one
synced write for all the submissions of one loop iteration): a node killed after that
answer re-admits it at its next start.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import NoReturn

import msgpack
from aiohttp import WSMsgType, web
from aiohttp.web_protocol import RequestPayloadError

from ledger import block as blockmod
from ledger import proof as proofmod
from ledger import views
from ledger.bodies import ACCOUNT_ID_PATTERN
from ledger.execution import RESULT_MESSAGES
from ledger.node import NodeUnavailable
from ledger.tx import TxError, parse_signed

log = logging.getLogger("ledger.rpc")

SINGLE_BODY_MAX = 256 * 1024
BATCH_BODY_MAX = 32 * 1024 * 1024
BATCH_TXS_MAX = 10_000
BATCH_SIGS_MAX = 20_000
WAIT_TIMEOUT_DEFAULT_S = 10.0
WAIT_TIMEOUT_MAX_S = 60.0
EVENT_QUEUE_MAX = 1024
EVENT_SUBSCRIBERS_MAX = 256  # each costs a queue and a JSON write per block
RPC_CONNECTIONS_MAX = 2048  # open client connections (see RpcServer.start)
RPC_IDLE_TIMEOUT_S = 30.0
DRAIN_S = 2.0  # how long a refused oversize body is still read and dropped (see _refuse_too_large)
# fullmatch, never `$`: `$` also matches before a trailing newline.
_HEX32 = re.compile(r"[0-9a-f]{64}")
_METRIC_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")

_STATUS_OF = {
    "too_large": 413, "duplicate": 409, "mempool_full": 429, "invalid_body": 422,
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str, close_connection: bool = False) -> web.Response:
    response = web.json_response({"error": {"code": code, "message": message}}, status=status)
    if close_connection:
        response.force_close()  # "Connection: close": nothing of this request is read any more
    return response


def tx_error(exc: TxError) -> ApiError:
    return ApiError(_STATUS_OF.get(exc.code, 400), exc.code, exc.message)


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except _Answered as answered:
        return answered.response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "bad_request")
        return error_response(exc.status if exc.status < 500 else 400, code, exc.reason or code)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("internal error serving %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error; see the node's log")


def _refusal_response() -> bytes:
    body = json.dumps({"error": {"code": "too_many_connections",
                                 "message": "this node has too many open connections; retry later"}}).encode()
    head = (f"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


class _RefuseConnection(asyncio.Protocol):
    """A connection past the limit: one 429 with the error object, then close.

    The close waits for the client's end (at most LINGER_S) and discards what it sends:
    closing with its request unread would reset the connection, and a reset can destroy
    the 429 before the client reads it."""

    RESPONSE = _refusal_response()
    LINGER_S = 1.0

    def connection_made(self, transport) -> None:
        self._transport = transport
        transport.write(self.RESPONSE)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(self.LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass  # the request is not read: the answer is the same for every request

    def eof_received(self) -> bool:
        self._transport.close()
        return False

    def connection_lost(self, exc) -> None:
        self._timer.cancel()


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, refusing with 413 as soon as it exceeds `limit` (never read whole)."""
    if request.content_length is not None and request.content_length > limit:
        await _refuse_too_large(request, limit)
    body = bytearray()
    try:
        async for chunk in request.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > limit:
                await _refuse_too_large(request, limit)
    except RequestPayloadError as exc:
        # A body aiohttp cannot decode (a bad Content-Encoding, broken chunking): the
        # client's fault, so a 4xx.
        reason = getattr(exc.__cause__, "message", None) or str(exc.__cause__ or exc)
        raise ApiError(400, "bad_encoding", f"the request body cannot be read: {reason}") from None
    return bytes(body)


class _Answered(Exception):
    """The handler has sent its response already (see _refuse_too_large)."""

    def __init__(self, response: web.StreamResponse):
        super().__init__("answered")
        self.response = response


async def _refuse_too_large(request: web.Request, limit: int) -> NoReturn:
    """413 at once, then the connection closes without the rest of the body being read.

    After the answer is sent, up to `limit` more bytes (for at most DRAIN_S) are read and
    dropped: a client still sending when the connection closes gets a reset that can
    destroy the 413 before it reads it, and most oversize bodies overshoot by less than
    the limit. So the node never holds more than `limit` bytes of a body and never reads
    more than twice that; the runner's lingering close is off (RpcServer.start).
    """
    response = error_response(413, "too_large", f"request body exceeds {limit} bytes", close_connection=True)
    await response.prepare(request)
    await response.write_eof()
    loop = asyncio.get_running_loop()
    deadline, dropped = loop.time() + DRAIN_S, 0
    while dropped < limit and not request.content.at_eof() and loop.time() < deadline:
        try:
            chunk = await asyncio.wait_for(request.content.readany(), deadline - loop.time())
        except (asyncio.TimeoutError, RequestPayloadError):
            break  # the client went quiet or its stream broke: stop dropping, close now
        dropped += len(chunk)
    raise _Answered(response)


def _is_msgpack(request: web.Request) -> bool:
    return request.content_type in ("application/msgpack", "application/x-msgpack")


def _parse_hex(value, what: str) -> bytes:
    if type(value) is not str:
        raise ApiError(400, "bad_encoding", f"{what} must be a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ApiError(400, "bad_encoding", f"{what} is not valid hex") from None


def _msgpack_entry(item) -> bytes:
    if type(item) is not bytes:
        raise ApiError(400, "bad_encoding", "a msgpack batch entry must be bin (an encoded signed tx)")
    return item


def _json_entry(item) -> bytes:
    return _parse_hex(item, "tx")


def _json_body(data: bytes):
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, bad UTF-8, and integers past Python's digit limit.
        raise ApiError(400, "bad_encoding", f"body is not valid JSON: {exc}") from None


def _tx_id_param(request: web.Request) -> bytes:
    value = request.match_info["tx_id"]
    if not _HEX32.fullmatch(value):
        raise ApiError(400, "bad_request", "tx_id must be 64 lowercase hex characters")
    return bytes.fromhex(value)


class RpcServer:
    def __init__(self, node):
        self.node = node
        self.app = web.Application(client_max_size=BATCH_BODY_MAX + 1, middlewares=[error_middleware])
        r = self.app.router
        r.add_post("/v1/txs", self.submit)
        r.add_post("/v1/txs/batch", self.submit_batch)
        r.add_get("/v1/txs/{tx_id}", self.tx_status)
        r.add_get("/v1/txs/{tx_id}/proof", self.tx_proof)
        r.add_get("/v1/blocks/latest", self.block_latest)
        r.add_get("/v1/blocks/{height}", self.block_at)
        r.add_get("/v1/accounts/{id}", self.account)
        r.add_get("/v1/holds/{id}", self.hold)
        r.add_get("/v1/lcs/{id}", self.lc)
        r.add_get("/v1/docs/{hash}", self.doc)
        r.add_get("/v1/members", self.members)
        r.add_get("/v1/genesis", self.genesis)
        r.add_get("/v1/status", self.status)
        r.add_get("/v1/events", self.events)
        r.add_get("/metrics", self.metrics)
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self.connections_refused = 0

    async def start(self, host: str, port: int, connections_max: int = RPC_CONNECTIONS_MAX,
                    idle_timeout_s: float = RPC_IDLE_TIMEOUT_S) -> None:
        """Listen with at most `connections_max` client connections open at once.

        aiohttp has no such limit, and every connection holds a file descriptor that the
        store and the peer links need too: past the limit a new connection is answered
        429 and closed, so a flood of idle or slow connections cannot starve the node.
        A connection with no request under way (never sent one, sends its headers slowly,
        or idles between requests) is closed after `idle_timeout_s`, so slots come free.
        """
        # lingering_time=0: after an answer that leaves a body unread (413), aiohttp would
        # otherwise keep reading and dropping it for 10 s, gigabytes over one connection.
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0,
                                     keepalive_timeout=idle_timeout_s, lingering_time=0)
        await self._runner.setup()
        server = self._runner.server

        def protocol():
            if len(server.connections) >= connections_max:
                self.connections_refused += 1
                return _RefuseConnection()
            return server()

        self._listener = await asyncio.get_running_loop().create_server(protocol, host, port, backlog=1024)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ submissions
    async def submit(self, request: web.Request) -> web.Response:
        body = await read_body(request, SINGLE_BODY_MAX)
        if _is_msgpack(request):
            raw = body
        else:
            data = _json_body(body)
            if type(data) is not dict or set(data) != {"tx"}:
                raise ApiError(400, "bad_encoding", 'JSON body must be {"tx": hex}')
            raw = _parse_hex(data["tx"], "tx")
        wait = request.query.get("wait") == "commit"
        timeout = self._timeout(request) if wait else None  # a bad query is refused before admission
        try:
            stx = self.node.submit(raw)
        except TxError as exc:
            raise tx_error(exc) from None
        await self._synced()
        if wait:
            record = self.node.commit_record(stx.tx_id)
            if record is not None:  # committed while it was being synced
                return web.json_response(self._committed_json(stx.tx_id, record))
            future = self.node.wait_for_commit(stx.tx_id)
            try:
                record = await asyncio.wait_for(asyncio.shield(future), timeout)
            except asyncio.CancelledError:
                self.node.stop_waiting(stx.tx_id, future)
                if not future.cancelled():
                    raise  # the request itself was cancelled (client gone, shutdown)
                # The node cancelled the wait: the tx expired from the mempool uncommitted.
                raise ApiError(404, "unknown_tx", "the transaction expired before it was committed") from None
            except asyncio.TimeoutError:
                self.node.stop_waiting(stx.tx_id, future)
                return web.json_response({"tx_id": stx.tx_id.hex(), "status": "pending"}, status=202)
            return web.json_response(self._committed_json(stx.tx_id, record))
        return web.json_response({"tx_id": stx.tx_id.hex(), "status": "pending"}, status=202)

    @staticmethod
    def _timeout(request: web.Request) -> float:
        raw = request.query.get("timeout")
        if raw is None:
            return WAIT_TIMEOUT_DEFAULT_S
        try:
            value = float(raw)
        except ValueError:
            raise ApiError(400, "bad_request", "timeout must be a number of seconds") from None
        if not 0 <= value <= WAIT_TIMEOUT_MAX_S:
            raise ApiError(400, "bad_request", f"timeout must be within 0..{WAIT_TIMEOUT_MAX_S:g} s")
        return value

    async def submit_batch(self, request: web.Request) -> web.Response:
        body = await read_body(request, BATCH_BODY_MAX)
        if _is_msgpack(request):
            try:
                items = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True)
            except (ValueError, msgpack.UnpackException, TypeError, RecursionError) as exc:
                raise ApiError(400, "bad_encoding", f"body is not a msgpack array: {exc}") from None
            if type(items) is not list:
                raise ApiError(400, "bad_encoding", "msgpack body must be an array of bin (encoded signed txs)")
            raws, entry = items, _msgpack_entry
        else:
            data = _json_body(body)
            if type(data) is not dict or set(data) != {"txs"} or type(data["txs"]) is not list:
                raise ApiError(400, "bad_encoding", 'JSON body must be {"txs": [hex, ...]}')
            raws, entry = data["txs"], _json_entry
        if len(raws) > BATCH_TXS_MAX:
            raise ApiError(413, "too_large", f"a batch holds at most {BATCH_TXS_MAX} transactions")
        parsed: list = []
        signatures = 0
        for item in raws:
            try:
                raw = entry(item)  # an entry of the wrong kind is refused in place, like any bad entry
                stx = parse_signed(raw)
                signatures += len(stx.sigs)
                parsed.append(stx)
            except ApiError as exc:
                parsed.append(exc)
            except TxError as exc:
                parsed.append(tx_error(exc))
        if signatures > BATCH_SIGS_MAX:
            raise ApiError(413, "too_large", f"a batch carries at most {BATCH_SIGS_MAX} signatures in all")
        results = []
        admitted = False
        for item in parsed:
            if isinstance(item, ApiError):
                results.append({"error": {"code": item.code, "message": item.message}})
                continue
            try:
                self.node.admit(item)
                results.append({"tx_id": item.tx_id.hex(), "status": "pending"})
                admitted = True
            except TxError as exc:
                results.append({"error": {"code": exc.code, "message": exc.message}})
        if admitted:
            await self._synced()
        return web.json_response({"results": results})

    async def _synced(self) -> None:
        """Answer "pending" only for transactions a crash of this node cannot lose."""
        try:
            # Shielded: the future is shared by every request admitted in this loop iteration.
            await asyncio.shield(self.node.synced())
        except NodeUnavailable as exc:
            raise ApiError(503, "unavailable", str(exc)) from None

    # ------------------------------------------------------------------ transactions and blocks
    def _committed_json(self, tx_id: bytes, record) -> dict:
        return {"tx_id": tx_id.hex(), "status": "committed", "height": record.height, "index": record.index,
                "result": {"code": record.code, "message": RESULT_MESSAGES.get(record.code, record.code)}}

    async def tx_status(self, request: web.Request) -> web.Response:
        tx_id = _tx_id_param(request)
        record = self.node.commit_record(tx_id)
        if record is not None:
            return web.json_response(self._committed_json(tx_id, record))
        if tx_id in self.node.mempool:
            return web.json_response({"tx_id": tx_id.hex(), "status": "pending", "height": None, "index": None,
                                      "result": None})
        raise ApiError(404, "unknown_tx", "this node holds no such transaction")

    async def tx_proof(self, request: web.Request) -> web.Response:
        tx_id = _tx_id_param(request)
        proof = proofmod.build_proof(self.node.store, tx_id)
        if proof is None:
            if tx_id in self.node.mempool:
                raise ApiError(404, "not_committed", "the transaction is pending; a proof exists once it is committed")
            raise ApiError(404, "unknown_tx", "this node holds no such committed transaction")
        return web.json_response(proof)

    def _block_json(self, height: int, with_txs: bool) -> dict:
        stored = self.node.store.block(height)
        cert = self.node.store.certificate(height)
        if stored is None or cert is None:
            raise ApiError(404, "unknown_block", f"no block at height {height}")
        header = blockmod.decode_header(stored.header)
        out = {
            "height": height, "hash": blockmod.block_hash(stored.header).hex(), "header": header.to_json(),
            "header_bytes": stored.header.hex(), "tx_ids": [i.hex() for i in stored.tx_ids],
            "results": stored.results, "commit": blockmod.certificate_to_json(cert),
        }
        if with_txs:
            out["txs"] = [t.hex() for t in stored.txs]
        return out

    async def block_latest(self, request: web.Request) -> web.Response:
        if self.node.tip.height == 0:
            raise ApiError(404, "unknown_block", "no block has been committed yet")
        return web.json_response(self._block_json(self.node.tip.height, request.query.get("txs") == "1"))

    async def block_at(self, request: web.Request) -> web.Response:
        raw = request.match_info["height"]
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:  # isdigit alone takes "²" and "١"
            raise ApiError(400, "bad_request", "height must be a positive integer")
        height = int(raw)
        if not 1 <= height <= self.node.tip.height:
            raise ApiError(404, "unknown_block", f"no block at height {height}")
        return web.json_response(self._block_json(height, request.query.get("txs") == "1"))

    # ------------------------------------------------------------------ state
    def _id_param(self, request: web.Request) -> str:
        value = request.match_info["id"]
        if not ACCOUNT_ID_PATTERN.fullmatch(value):  # the contract's one rule for account, hold and LC ids
            raise ApiError(400, "bad_request", "id must match [A-Za-z0-9._:-]{1,64}")
        return value

    async def account(self, request: web.Request) -> web.Response:
        found = views.account_view(self.node.state, self._id_param(request))
        if found is None:
            raise ApiError(404, "unknown_account", "no such account")
        return web.json_response(found)

    async def hold(self, request: web.Request) -> web.Response:
        found = views.hold_view(self.node.state, self._id_param(request))
        if found is None:
            raise ApiError(404, "unknown_hold", "no such hold")
        return web.json_response(found)

    async def lc(self, request: web.Request) -> web.Response:
        found = views.lc_view(self.node.state, self._id_param(request))
        if found is None:
            raise ApiError(404, "unknown_lc", "no such letter of credit")
        return web.json_response(found)

    async def doc(self, request: web.Request) -> web.Response:
        value = request.match_info["hash"]
        if not _HEX32.fullmatch(value):
            raise ApiError(400, "bad_request", "hash must be 64 lowercase hex characters")
        found = views.doc_view(self.node.state, bytes.fromhex(value))
        if found is None:
            raise ApiError(404, "unknown_doc", "no such document")
        return web.json_response(found)

    async def members(self, request: web.Request) -> web.Response:
        return web.json_response(views.members_view(self.node.state))

    async def genesis(self, request: web.Request) -> web.Response:
        return web.json_response(self.node.genesis)

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.node.status())

    # ------------------------------------------------------------------ streams and metrics
    async def events(self, request: web.Request) -> web.WebSocketResponse:
        if len(self.node.event_subscribers) >= EVENT_SUBSCRIBERS_MAX:
            raise ApiError(429, "too_many_subscribers",
                           f"this node serves at most {EVENT_SUBSCRIBERS_MAX} event subscribers; retry later")
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=4096)
        await ws.prepare(request)
        queue: asyncio.Queue = asyncio.Queue(maxsize=EVENT_QUEUE_MAX)
        self.node.event_subscribers.add(queue)
        reader = asyncio.get_running_loop().create_task(self._drain_client(ws))
        try:
            while not ws.closed:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                message = getter.result()
                if message is None:
                    break  # dropped for falling behind
                await ws.send_str(message)  # JSON, encoded once by the node for all subscribers
        finally:
            self.node.event_subscribers.discard(queue)
            reader.cancel()
            await ws.close()
        return ws

    @staticmethod
    async def _drain_client(ws: web.WebSocketResponse) -> None:
        """Read (and ignore) what the client sends until it closes."""
        async for message in ws:
            if message.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                break

    async def metrics(self, request: web.Request) -> web.Response:
        node = self.node
        lines = []

        def gauge(name: str, value, help_text: str, kind: str = "gauge") -> None:
            name = _METRIC_UNSAFE.sub("_", name)
            lines.extend([f"# HELP ledger_{name} {help_text}", f"# TYPE ledger_{name} {kind}", f"ledger_{name} {value}"])

        gauge("height", node.tip.height, "Committed height.")
        gauge("view", node.replica.view, "Current consensus view.")
        gauge("mempool_size", len(node.mempool), "Pending transactions.")
        gauge("rpc_connections_open", len(self._runner.server.connections) if self._runner else 0,
              "Open RPC client connections.")
        gauge("rpc_connections_refused_total", self.connections_refused,
              "RPC connections refused with 429 because too many were open.", "counter")
        gauge("peers_connected", len(node.p2p.connected()), "Connected validator peers.")
        for name, value in sorted(node.stats.counters.items()):
            gauge(f"node_{name}_total", value, f"Node counter {name}.", "counter")
        for name, value in sorted(node.replica.counters.items()):
            gauge(f"consensus_{name}_total", value, f"Consensus counter {name}.", "counter")
        for name, value in sorted(node.p2p.counters.items()):
            gauge(f"p2p_{name}_total", value, f"Peer network counter {name}.", "counter")
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")
