"""Authenticated aiohttp WebSocket links between validators (the I/O adapter).

`PeerNetwork` keeps one WebSocket link to every configured validator and moves opaque
payload bytes over it; what the payloads mean (consensus, tx gossip, block fetch) is
the node's business. The protocol logic lives in `p2p.handshake` (no I/O); this module
only dials, accepts, times out, queues, writes, reads and counts.

Link rules (docs/p2p.md has the full description):
- the validator with the lexicographically smaller public key dials, the other accepts,
  so two validators never race to open two links;
- a link exists only after the challenge-response handshake has proven the peer's key;
  inbound connections from keys outside the configured validators are refused;
- a second link from the same validator replaces the first (the newest wins: the
  dialer only redials once it thinks the old link is dead);
- a peer that sends anything we cannot accept (text frames, oversize frames, bad
  handshake frames) is counted and disconnected; it never raises into the server;
- dialers reconnect forever with jittered exponential backoff until `stop()`.

Everything here runs on one event loop; no locks are needed and none are used.
"""
from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Callable

import aiohttp
import yarl
from aiohttp import WSCloseCode, WSMsgType, web

from ledger.crypto import KeyPair
from p2p import handshake
from p2p.outbound import OutboundQueue

log = logging.getLogger(__name__)

P2P_PATH = "/p2p"
DIAL = "dial"
ACCEPT = "accept"

# Names of every counter, so the node can export them all even while they are zero.
COUNTER_NAMES = (
    "handshake_ok",          # links that completed the handshake
    "handshake_failed",      # handshakes that did not (sum of the reasons below)
    *(f"handshake_{reason}" for reason in handshake.HANDSHAKE_FAILURE_REASONS),
    "handshake_timeout",     # the peer did not finish within handshake_timeout_s
    "handshake_closed",      # the connection went away during the handshake
    "garbage_dropped",       # connections dropped for frames we cannot accept (any phase)
    "oversize",              # ... of which: a frame larger than max_message_bytes
    "bad_upgrade",           # HTTP requests to /p2p that were not a WebSocket upgrade
    "inbound_busy",          # inbound connections refused: too many handshakes pending
    "dial_attempts",
    "dial_failed",           # TCP connect or WebSocket upgrade failed
    "links_established",
    "links_replaced",        # an older link to the same validator closed for a newer one
    "reconnects",            # links established to a validator that had been linked before
    "heartbeat_timeouts",    # a link closed because the peer stopped answering pings
    "link_errors",           # a link closed by any other transport error
    "send_failed",           # the sender task could not write to a link
    "send_not_connected",    # send() to a validator with no link
    "send_too_large",        # send() of a payload larger than max_message_bytes
    "queue_full",            # send() refused: the peer's outbound queue is full
    "dropped_on_close",      # queued payloads discarded when their link closed
    "messages_in",
    "messages_out",
    "bytes_in",
    "bytes_out",
    "on_message_errors",     # on_message raised (a bug in the caller, logged)
    "internal_errors",       # a bug in this module caught at a task boundary (logged)
)


@dataclass(frozen=True)
class PeerInfo:
    name: str            # e.g. "node2"
    public_key: bytes    # its genesis validator key
    host: str
    port: int            # its peer port


class _Link:
    """One authenticated WebSocket to one validator, with its queue and sender task."""

    __slots__ = ("peer", "socket", "direction", "outbound", "sender_task")

    def __init__(self, peer: PeerInfo, socket, direction: str, queue_bytes_max: int):
        self.peer = peer
        self.socket = socket  # web.WebSocketResponse (accepted) or aiohttp.ClientWebSocketResponse (dialed)
        self.direction = direction
        self.outbound = OutboundQueue(queue_bytes_max)
        self.sender_task: asyncio.Task | None = None


class _ConnectionLost(Exception):
    """The connection ended during the handshake without the peer breaking the protocol."""


class PeerNetwork:
    """Links to every configured validator; `send`/`broadcast` out, `on_message` in."""

    def __init__(
        self,
        *,
        chain_id: str,
        genesis_hash: bytes,
        key: KeyPair,
        name: str,
        listen_host: str,
        listen_port: int,
        peers: list[PeerInfo],
        on_message: Callable[[bytes, bytes], None],
        max_message_bytes: int = 64 * 1024 * 1024,
        queue_bytes_max: int = 256 * 1024 * 1024,
        reconnect_min_s: float = 0.05,
        reconnect_max_s: float = 2.0,
        handshake_timeout_s: float = 5.0,
        heartbeat_s: float = 10.0,
        close_timeout_s: float = 2.0,
        rng: random.Random | None = None,
    ):
        if not chain_id:
            raise ValueError("chain_id must not be empty")
        if len(genesis_hash) != handshake.HASH_BYTES:
            raise ValueError("genesis_hash must be 32 bytes")
        if not 0 <= listen_port <= 65535:
            raise ValueError(f"listen_port {listen_port} is out of range")
        if max_message_bytes <= handshake.HANDSHAKE_FRAME_BYTES_MAX or queue_bytes_max <= 0:
            raise ValueError("max_message_bytes and queue_bytes_max must be positive (and hold a handshake frame)")
        if not 0 < reconnect_min_s <= reconnect_max_s:
            raise ValueError("need 0 < reconnect_min_s <= reconnect_max_s")
        if handshake_timeout_s <= 0 or heartbeat_s <= 0 or close_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        self.chain_id = chain_id
        self.genesis_hash = genesis_hash
        self.name = name
        self.listen_host = listen_host
        self.listen_port = listen_port  # replaced by the bound port after start() when 0
        self._key = key
        self._on_message = on_message
        self._max_message_bytes = max_message_bytes
        self._queue_bytes_max = queue_bytes_max
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._handshake_timeout_s = handshake_timeout_s
        self._heartbeat_s = heartbeat_s
        self._close_timeout_s = close_timeout_s
        self._rng = rng if rng is not None else random.Random()

        # The driver may pass the whole validator set; our own entry is not a peer.
        self._peers = [peer for peer in peers if peer.public_key != key.public_key]
        self._peers_by_key = {peer.public_key: peer for peer in self._peers}
        if len(self._peers_by_key) != len(self._peers):
            raise ValueError("two configured peers share a public key")
        for peer in self._peers:
            if len(peer.public_key) != handshake.KEY_BYTES:
                raise ValueError(f"peer {peer.name}: public key must be 32 bytes")
        self._validator_keys = frozenset(self._peers_by_key)
        # Inbound handshakes in flight are bounded so that idle sockets cannot pile up.
        self._pending_inbound_max = max(8, 2 * len(self._peers))

        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._links: dict[bytes, _Link] = {}
        self._link_generation: dict[bytes, int] = {}  # links installed per peer, ever
        self._open_sockets: set = set()          # every WebSocket not yet closed, for stop()
        self._dial_tasks: list[asyncio.Task] = []
        self._background_tasks: set[asyncio.Task] = set()  # closes of replaced links
        self._pending_inbound = 0
        self._link_change = asyncio.Event()       # replaced by a fresh Event on every change
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._started = False
        self._stopping = False

    # ---- public API -------------------------------------------------------------------

    @property
    def public_key(self) -> bytes:
        """Our own validator key: the sender key our peers see in their on_message."""
        return self._key.public_key

    async def start(self) -> None:
        """Listen on listen_host:listen_port (path /p2p) and start dialing larger keys."""
        if self._started:
            raise RuntimeError("PeerNetwork.start() called twice")
        self._started = True
        app = web.Application()
        app.router.add_get(P2P_PATH, self._on_inbound_request)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=self._close_timeout_s)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.listen_host, self.listen_port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        if self.listen_port == 0:
            self.listen_port = runner.addresses[0][1]
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._handshake_timeout_s),
            connector=aiohttp.TCPConnector(limit=max(1, len(self._peers))),
        )
        for peer in self._peers:
            if self._key.public_key < peer.public_key:
                task = asyncio.create_task(self._dial_loop(peer), name=f"p2p-dial-{self.name}-{peer.name}")
                self._dial_tasks.append(task)
        log.info("%s: p2p listening on %s:%d, dialing %d of %d peers", self.name, self.listen_host,
                 self.listen_port, len(self._dial_tasks), len(self._peers))

    async def stop(self) -> None:
        """Close every link and the listener, end every task. Safe to call twice."""
        if not self._started or self._stopping:
            return
        self._stopping = True
        # Close sockets first so links end with a clean close frame; then nothing is
        # left for the cancelled tasks and the runner to wait on.
        await asyncio.gather(*(self._close_socket(socket, WSCloseCode.GOING_AWAY, "shutdown")
                               for socket in list(self._open_sockets)))
        for task in self._dial_tasks:
            task.cancel()
        await asyncio.gather(*self._dial_tasks, *self._background_tasks, return_exceptions=True)
        self._dial_tasks.clear()
        if self._runner is not None:
            await self._runner.cleanup()  # waits for the inbound handlers to return
        if self._session is not None:
            await self._session.close()
        self._notify_link_change()
        log.info("%s: p2p stopped", self.name)

    def send(self, peer_key: bytes, payload: bytes) -> bool:
        """Queue `payload` for one validator without blocking; False if it cannot be queued."""
        if not isinstance(payload, bytes):
            raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
        link = self._links.get(peer_key)
        if link is None:
            self.counters["send_not_connected"] += 1
            return False
        return self._enqueue(link, payload)

    def broadcast(self, payload: bytes) -> None:
        """Queue `payload` for every connected validator (refusals are counted)."""
        if not isinstance(payload, bytes):
            raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
        for link in list(self._links.values()):
            self._enqueue(link, payload)

    def connected(self) -> list[bytes]:
        return list(self._links)

    def link_generations(self) -> dict[bytes, int]:
        """Each connected peer's link generation: it grows every time a link to that peer
        comes up, so a caller that compares two readings sees every new link, also one that
        dropped and came back between the readings."""
        return {key: self._link_generation[key] for key in self._links}

    def status(self) -> list[dict]:
        """One entry per configured peer, in configuration order."""
        entries = []
        for peer in self._peers:
            link = self._links.get(peer.public_key)
            entries.append({
                "name": peer.name,
                "public_key": peer.public_key.hex(),
                "connected": link is not None,
                "direction": DIAL if self._key.public_key < peer.public_key else ACCEPT,
                "queued_bytes": link.outbound.bytes_queued if link is not None else 0,
            })
        return entries

    async def wait_connected(self, count: int, timeout_s: float) -> bool:
        """True once at least `count` validators are linked; False after `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s):
                while len(self._links) < count:
                    await self._link_change.wait()
        except TimeoutError:
            return False
        return True

    # ---- outbound -----------------------------------------------------------------

    def _enqueue(self, link: _Link, payload: bytes) -> bool:
        # The peer would drop the whole link for an oversize frame; refuse it here instead.
        if len(payload) > self._max_message_bytes:
            self.counters["send_too_large"] += 1
            return False
        if not link.outbound.put(payload):
            self.counters["queue_full"] += 1
            return False
        return True

    async def _send_loop(self, link: _Link) -> None:
        """Write queued payloads back to back; only the transport's flow control suspends."""
        queue = link.outbound
        try:
            while True:
                await queue.wait_nonempty()
                # Drain the whole backlog before sleeping again. send_bytes of an
                # uncompressed frame writes to the transport at once and suspends only
                # when the transport is paused (the peer reads slower than we write).
                while len(queue):
                    payload = queue.peek()
                    await link.socket.send_bytes(payload)
                    queue.pop()
                    self.counters["messages_out"] += 1
                    self.counters["bytes_out"] += len(payload)
        except (ConnectionError, aiohttp.ClientError) as error:
            # The link died under us. Closing the socket ends the receive loop, which
            # tears the link down.
            self.counters["send_failed"] += 1
            log.info("%s: sending to %s failed: %r", self.name, link.peer.name, error)
            await self._close_socket(link.socket, WSCloseCode.GOING_AWAY, "send failed")
        except Exception:
            # A bug: nobody awaits this task's result, so report it here and drop the link.
            self.counters["internal_errors"] += 1
            log.exception("%s: sender for %s failed unexpectedly", self.name, link.peer.name)
            await self._close_socket(link.socket, WSCloseCode.INTERNAL_ERROR, "internal error")

    # ---- dialing ------------------------------------------------------------------

    def _backoff_sleep_s(self, delay_s: float) -> float:
        # "Equal jitter": at least half the delay, so the backoff still grows, and a
        # random rest, so validators that lost a peer together do not redial in step.
        return delay_s / 2 + self._rng.random() * delay_s / 2

    async def _dial_loop(self, peer: PeerInfo) -> None:
        delay_s = self._reconnect_min_s
        while not self._stopping:
            try:
                link_lasted = await self._dial_once(peer)
            except Exception:
                # A bug here must not end the dialing for good; log it and retry later.
                self.counters["internal_errors"] += 1
                log.exception("%s: dialing %s failed unexpectedly", self.name, peer.name)
                link_lasted = False
            if self._stopping:
                return
            if link_lasted:
                # Only a link that stayed up resets the backoff: one that is dropped at
                # once (a flapping peer) must not be redialed in a tight loop.
                delay_s = self._reconnect_min_s
            await asyncio.sleep(self._backoff_sleep_s(delay_s))
            delay_s = min(delay_s * 2, self._reconnect_max_s)

    async def _dial_once(self, peer: PeerInfo) -> bool:
        """Dial, handshake and serve one link to `peer`; True if the link stayed up for
        at least reconnect_max_s (so the next dial may start at the shortest backoff)."""
        self.counters["dial_attempts"] += 1
        url = yarl.URL.build(scheme="http", host=peer.host, port=peer.port, path=P2P_PATH)
        try:
            socket = await self._session.ws_connect(
                url,
                max_msg_size=self._max_message_bytes,
                heartbeat=self._heartbeat_s,
                compress=0,  # payloads are mostly signatures and hashes; deflate costs CPU for little
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self._close_timeout_s),
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            self.counters["dial_failed"] += 1
            log.debug("%s: dialing %s at %s failed: %r", self.name, peer.name, url, error)
            return False
        self._open_sockets.add(socket)
        try:
            peer_key = await self._authenticate(socket, expected_peer_key=peer.public_key,
                                                remote=f"{peer.name} at {peer.host}:{peer.port}")
            if peer_key is None:
                return False
            linked_at_s = asyncio.get_running_loop().time()
            await self._serve_link(_Link(peer, socket, DIAL, self._queue_bytes_max))
            return asyncio.get_running_loop().time() - linked_at_s >= self._reconnect_max_s
        finally:
            await self._close_socket(socket, WSCloseCode.GOING_AWAY, "link closed")
            self._open_sockets.discard(socket)

    # ---- accepting ----------------------------------------------------------------

    async def _on_inbound_request(self, request: web.Request) -> web.StreamResponse:
        if self._stopping:
            return web.Response(status=503, text="shutting down")
        if self._pending_inbound >= self._pending_inbound_max:
            self.counters["inbound_busy"] += 1
            log.warning("%s: refusing inbound from %s: %d handshakes pending", self.name,
                        request.remote, self._pending_inbound)
            return web.Response(status=503, text="busy")
        socket = web.WebSocketResponse(
            max_msg_size=self._max_message_bytes,
            heartbeat=self._heartbeat_s,
            compress=False,
            timeout=self._close_timeout_s,
        )
        if not socket.can_prepare(request).ok:
            self.counters["bad_upgrade"] += 1
            return web.Response(status=400, text="WebSocket upgrade required")
        self._pending_inbound += 1
        handshake_pending = True
        try:
            await socket.prepare(request)
            self._open_sockets.add(socket)
            try:
                # stop() may have begun during the upgrade and missed this socket.
                peer_key = None if self._stopping else await self._authenticate(
                    socket, expected_peer_key=None, remote=f"inbound {request.remote}")
                self._pending_inbound -= 1
                handshake_pending = False
                if peer_key is not None:
                    await self._serve_link(_Link(self._peers_by_key[peer_key], socket, ACCEPT, self._queue_bytes_max))
            finally:
                await self._close_socket(socket, WSCloseCode.GOING_AWAY, "link closed")
                self._open_sockets.discard(socket)
        finally:
            if handshake_pending:
                self._pending_inbound -= 1
        return socket

    # ---- handshake ----------------------------------------------------------------

    async def _authenticate(self, socket, *, expected_peer_key: bytes | None, remote: str) -> bytes | None:
        """Run the handshake on a fresh socket; the proven peer key, or None (counted, closed)."""
        state = handshake.Handshake(
            chain_id=self.chain_id,
            genesis_hash=self.genesis_hash,
            key=self._key,
            validator_keys=self._validator_keys,
            expected_peer_key=expected_peer_key,
        )
        try:
            async with asyncio.timeout(self._handshake_timeout_s):
                await socket.send_bytes(state.hello())
                auth_frame = state.receive_hello(await self._receive_handshake_frame(socket))
                await socket.send_bytes(auth_frame)
                peer_key = state.receive_auth(await self._receive_handshake_frame(socket))
        except handshake.HandshakeError as error:
            close_code = WSCloseCode.UNSUPPORTED_DATA if error.reason == handshake.GARBAGE else WSCloseCode.POLICY_VIOLATION
            self._count_handshake_failure(f"handshake_{error.reason}", remote, error.message)
            await self._close_socket(socket, close_code, f"handshake: {error.reason}")
            return None
        except TimeoutError:
            self._count_handshake_failure("handshake_timeout", remote, "no handshake in time")
            await self._close_socket(socket, WSCloseCode.POLICY_VIOLATION, "handshake: timeout")
            return None
        except _ConnectionLost as error:
            self._count_handshake_failure("handshake_closed", remote, str(error))
            return None
        except (ConnectionError, aiohttp.ClientError) as error:
            # Writing to a socket that closed meanwhile.
            self._count_handshake_failure("handshake_closed", remote, repr(error))
            return None
        self.counters["handshake_ok"] += 1
        return peer_key

    async def _receive_handshake_frame(self, socket) -> bytes:
        message = await socket.receive()
        if message.type is WSMsgType.BINARY:
            return message.data
        if message.type is WSMsgType.TEXT:
            raise handshake.HandshakeError(handshake.GARBAGE, "text frame")
        if message.type is WSMsgType.ERROR:
            # aiohttp has closed the socket already; a WebSocketError means the peer's
            # frame was bad (counted as garbage by the caller), anything else a lost transport.
            error = message.data
            if isinstance(error, aiohttp.WebSocketError):
                if error.code == WSCloseCode.MESSAGE_TOO_BIG and not self._stopping:
                    self.counters["oversize"] += 1
                raise handshake.HandshakeError(handshake.GARBAGE, f"bad frame: {error!r}")
            raise _ConnectionLost(f"transport error: {error!r}")
        raise _ConnectionLost(f"{message.type.name} during handshake")

    def _count_handshake_failure(self, counter: str, remote: str, detail: str) -> None:
        if self._stopping:
            return  # our own shutdown interrupted it: not the peer's fault
        self.counters["handshake_failed"] += 1
        self.counters[counter] += 1
        if counter == "handshake_garbage":
            self.counters["garbage_dropped"] += 1
        log.warning("%s: handshake failed (%s) with %s: %s", self.name, counter, remote, detail)

    # ---- established links --------------------------------------------------------

    async def _serve_link(self, link: _Link) -> None:
        """Install `link`, pump it until it closes, then remove it."""
        if self._stopping:
            return  # the handshake finished while stop() was closing everything
        self._install_link(link)
        link.sender_task = asyncio.create_task(self._send_loop(link), name=f"p2p-send-{self.name}-{link.peer.name}")
        try:
            await self._receive_loop(link)
        finally:
            link.sender_task.cancel()
            # asyncio.wait never raises the task's own outcome, but does propagate our
            # own cancellation (stop()).
            await asyncio.wait([link.sender_task])
            self._remove_link(link)

    async def _receive_loop(self, link: _Link) -> None:
        socket = link.socket
        while True:
            message = await socket.receive()
            kind = message.type
            if kind is WSMsgType.BINARY:
                self._deliver(link, message.data)
            elif kind in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                log.info("%s: %s closed the link", self.name, link.peer.name)
                return
            elif kind is WSMsgType.ERROR:
                self._count_receive_error(message.data)  # aiohttp closed the socket already
                log.warning("%s: link to %s dropped: %r", self.name, link.peer.name, message.data)
                return
            else:
                # Text frames (and anything else aiohttp hands up): the protocol is binary only.
                self.counters["garbage_dropped"] += 1
                log.warning("%s: %s sent a %s frame; dropping the link", self.name, link.peer.name, kind.name)
                await self._close_socket(socket, WSCloseCode.UNSUPPORTED_DATA, "binary frames only")
                return

    def _deliver(self, link: _Link, payload: bytes) -> None:
        self.counters["messages_in"] += 1
        self.counters["bytes_in"] += len(payload)
        try:
            self._on_message(link.peer.public_key, payload)
        except Exception:
            # The callback's bug, not the peer's: keep the link, but make it loud.
            self.counters["on_message_errors"] += 1
            log.exception("%s: on_message raised for a payload from %s", self.name, link.peer.name)

    def _count_receive_error(self, error: BaseException) -> None:
        """Count why aiohttp ended a link: a bad frame from the peer, or a lost transport."""
        if isinstance(error, aiohttp.WebSocketError):
            self.counters["garbage_dropped"] += 1
            if error.code == WSCloseCode.MESSAGE_TOO_BIG:
                self.counters["oversize"] += 1
        elif isinstance(error, TimeoutError):
            self.counters["heartbeat_timeouts"] += 1
        else:
            self.counters["link_errors"] += 1

    def _install_link(self, link: _Link) -> None:
        key = link.peer.public_key
        previous = self._links.get(key)
        self._links[key] = link
        self.counters["links_established"] += 1
        if key in self._link_generation:
            self.counters["reconnects"] += 1
        self._link_generation[key] = self._link_generation.get(key, 0) + 1
        if previous is not None:
            # The dialer redials only once it believes the old link is dead, so the
            # newest link is the live one. The old one's own task finishes its teardown.
            self.counters["links_replaced"] += 1
            log.info("%s: new link from %s replaces the old one", self.name, link.peer.name)
            task = asyncio.create_task(self._close_socket(previous.socket, WSCloseCode.OK, "replaced by a newer link"))
            self._background_tasks.add(task)
            task.add_done_callback(self._background_tasks.discard)
        log.info("%s: linked with %s (%s)", self.name, link.peer.name, link.direction)
        self._notify_link_change()

    def _remove_link(self, link: _Link) -> None:
        dropped = link.outbound.clear()
        self.counters["dropped_on_close"] += dropped
        # A replaced link must not remove its successor.
        if self._links.get(link.peer.public_key) is link:
            del self._links[link.peer.public_key]
            self._notify_link_change()

    def _notify_link_change(self) -> None:
        self._link_change.set()
        self._link_change = asyncio.Event()

    async def _close_socket(self, socket, code: int, reason: str) -> None:
        # close() is a no-op on a closed socket and swallows transport errors itself;
        # it waits at most close_timeout_s for the peer's close frame.
        await socket.close(code=code, message=reason.encode())
