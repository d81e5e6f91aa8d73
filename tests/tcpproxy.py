"""A loopback TCP proxy for real-process tests that can be cut like a pulled cable.

`TcpProxy(target_port)` listens on 127.0.0.1 at a free port the kernel picks (bind to
port 0, so no other process can race us for it) and forwards every accepted connection,
byte for byte in both directions, to 127.0.0.1:target_port.

* `cut()`: a black hole. Nothing is forwarded any more in either direction, but every
  socket stays open, so neither end sees a FIN or a reset (as with a pulled cable, each
  end only notices by its own timeouts). Bytes that arrive meanwhile are read and
  discarded, so a stalled connection holds no buffer. New connections are accepted,
  but the proxy does not connect them onwards and forwards nothing on them. An end that
  closes its side meanwhile is not told to the other end.
* `heal()`: closes (aborts) every connection that was stalled by the cut, and forwards
  the connections accepted from then on again.
* `stop()`: closes the listener and every connection and ends the proxy's thread.

Everything runs on one asyncio loop in one daemon thread per proxy; the public methods
are thread-safe and wait for the loop to have done what they ask. At most
`max_connections` connections are held at once (further ones are closed at once), and
each direction reads at most `CHUNK` bytes before writing them and waiting for the
write to drain, so memory stays bounded.
"""
from __future__ import annotations

import asyncio
import threading

CHUNK = 64 * 1024
HOST = "127.0.0.1"


class _Connection:
    __slots__ = ("client", "upstream", "stalled", "closed", "tasks")

    def __init__(self, client: asyncio.StreamWriter):
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.stalled = False
        self.closed = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()

    def abort(self) -> None:
        self.closed.set()
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()


class TcpProxy:
    def __init__(self, target_port: int, name: str = "", *, max_connections: int = 64, connect_timeout_s: float = 5.0):
        self.target_port = target_port
        self.name = name or f"proxy->{target_port}"
        self.port: int | None = None
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self.counters = {"accepted": 0, "refused": 0, "connect_failed": 0, "bytes_forwarded": 0,
                         "bytes_dropped": 0, "stalled_closed": 0}
        self._cut = False
        self._connections: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control (any thread)
    def start(self) -> "TcpProxy":
        if self._thread is not None:
            raise RuntimeError("TcpProxy.start() called twice")
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(ready, failure), name=self.name, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"{self.name} did not start")
        if failure:
            self._thread.join(5)
            raise failure[0]
        return self

    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self) -> None:
        self._call(self._do_cut)

    def heal(self) -> None:
        self._call(self._do_heal)

    def stop(self) -> None:
        """Idempotent; safe to call from a finally block whatever state the proxy is in."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None or not thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        except Exception:  # noqa: BLE001 - stopping must not raise; the loop is stopped below anyway
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    def stats(self) -> dict:
        return dict(self.counters, open=len(self._connections), cut=self._cut)

    # ------------------------------------------------------------------ the loop thread
    def _run(self, ready: threading.Event, failure: list) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(asyncio.start_server(self._on_client, HOST, 0))
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
            failure.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._shutdown())
            loop.close()

    def _call(self, function) -> None:
        async def run():
            function()
        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def _do_cut(self) -> None:
        self._cut = True
        for connection in self._connections:
            connection.stalled = True

    def _do_heal(self) -> None:
        self._cut = False
        for connection in [c for c in self._connections if c.stalled]:
            self.counters["stalled_closed"] += 1
            connection.abort()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = []
        for connection in list(self._connections):
            connection.abort()  # every pump sees EOF or an error and its handler returns
            tasks.extend(connection.tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for task in tasks:
            if not task.done():  # not expected; never leave a task behind
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.max_connections or not self._server.is_serving():
            self.counters["refused"] += 1
            writer.transport.abort()
            return
        self.counters["accepted"] += 1
        connection = _Connection(writer)
        connection.tasks.add(asyncio.current_task())
        self._connections.add(connection)
        try:
            if self._cut:
                # The cable is out: the connection is accepted here but never reaches the target.
                connection.stalled = True
                await self._pump(reader, None, connection)
                return
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(HOST, self.target_port), self.connect_timeout_s)
            except (OSError, asyncio.TimeoutError):
                self.counters["connect_failed"] += 1
                return
            connection.upstream = up_writer
            if connection.closed.is_set():  # healed or stopped while connecting
                return
            pumps = [asyncio.ensure_future(self._pump(reader, up_writer, connection)),
                     asyncio.ensure_future(self._pump(up_reader, writer, connection))]
            connection.tasks.update(pumps)
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            connection.abort()
            self._connections.discard(connection)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter | None,
                    connection: _Connection) -> None:
        """Copy source to sink until EOF; while stalled, read and drop instead. Returns when
        this direction is over (which ends the connection) or the connection is closed."""
        try:
            while not connection.closed.is_set():
                data = await source.read(CHUNK)
                if not data:
                    if connection.stalled:
                        # No FIN crosses a pulled cable: hold the other end until heal() or stop().
                        await connection.closed.wait()
                    return
                if connection.stalled or sink is None:
                    self.counters["bytes_dropped"] += len(data)
                    continue
                sink.write(data)
                await sink.drain()
                self.counters["bytes_forwarded"] += len(data)
        except (ConnectionError, OSError):
            return
