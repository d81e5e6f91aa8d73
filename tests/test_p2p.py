"""p2p: the sans-IO handshake, and PeerNetwork links over real sockets on 127.0.0.1.

Networks are started in descending key order with listen_port=0: a validator dials only
larger keys, which are then already listening on a known port, so no test guesses a
free port. Raw aiohttp clients play misbehaving or replaying peers.
"""
from __future__ import annotations

import asyncio
import gc
import random

import aiohttp
import pytest

from ledger import codec
from ledger.crypto import KeyPair
from p2p import handshake
from p2p.handshake import Handshake, HandshakeError
from p2p.network import PeerInfo, PeerNetwork
from p2p.outbound import OutboundQueue

CHAIN_ID = "test-chain"
GENESIS_HASH = codec.sha256(b"test genesis")
HOST = "127.0.0.1"
# Port for peers this node never dials (they have smaller keys and dial us); it is
# never connected to.
NEVER_DIALED_PORT = 9


def sorted_keys(count: int) -> list[KeyPair]:
    """Fresh keys in ascending public-key order, so index order is dial order."""
    return sorted((KeyPair.generate() for _ in range(count)), key=lambda pair: pair.public_key)


async def eventually(condition, timeout_s: float = 3.0) -> None:
    """Wait until `condition()` holds (counters move on the peer's own schedule)."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


class Inbox:
    """What one network's on_message received, in order."""

    def __init__(self):
        self.messages: list[tuple[bytes, bytes]] = []

    def __call__(self, sender_key: bytes, payload: bytes) -> None:
        self.messages.append((sender_key, payload))

    async def wait_for(self, sender_key: bytes, payload: bytes, timeout_s: float = 3.0) -> None:
        await eventually(lambda: (sender_key, payload) in self.messages, timeout_s)


class Harness:
    """Starts networks and raw clients, and stops every one of them at teardown."""

    def __init__(self):
        self.networks: list[PeerNetwork] = []
        self.sessions: list[aiohttp.ClientSession] = []

    async def start_network(self, keys, index, ports, inbox=None, **options) -> PeerNetwork:
        peers = [PeerInfo(f"node{other}", keys[other].public_key, HOST, ports.get(other, NEVER_DIALED_PORT))
                 for other in range(len(keys)) if other != index]
        options.setdefault("chain_id", CHAIN_ID)
        options.setdefault("genesis_hash", GENESIS_HASH)
        options.setdefault("reconnect_max_s", 0.2)
        network = PeerNetwork(key=keys[index], name=f"node{index}", listen_host=HOST,
                              listen_port=options.pop("listen_port", 0), peers=peers,
                              on_message=inbox if inbox is not None else Inbox(), **options)
        await network.start()
        self.networks.append(network)
        ports[index] = network.listen_port
        return network

    async def start_cluster(self, keys, **options) -> tuple[list[PeerNetwork], list[Inbox], dict[int, int]]:
        """One network per key, largest key first, so every dialed port is already bound."""
        networks: list[PeerNetwork | None] = [None] * len(keys)
        inboxes = [Inbox() for _ in keys]
        ports: dict[int, int] = {}
        for index in reversed(range(len(keys))):
            networks[index] = await self.start_network(keys, index, ports, inboxes[index], **options)
        return networks, inboxes, ports

    async def raw_socket(self, port: int, max_msg_size: int = 4 * 1024 * 1024):
        session = aiohttp.ClientSession()
        self.sessions.append(session)
        return await session.ws_connect(f"http://{HOST}:{port}/p2p", max_msg_size=max_msg_size)

    async def close(self) -> None:
        for network in self.networks:
            await network.stop()
        for session in self.sessions:
            await session.close()


@pytest.fixture
async def harness():
    running = Harness()
    try:
        yield running
    finally:
        await running.close()


async def raw_dial_handshake(socket, key: KeyPair, server_key: bytes, chain_id=CHAIN_ID, genesis_hash=GENESIS_HASH):
    """Handshake as a dialer over a raw socket; returns the frames we sent and the server's key.

    The server key is None when the server refused (it closes instead of answering).
    """
    state = Handshake(chain_id=chain_id, genesis_hash=genesis_hash, key=key,
                      validator_keys=frozenset([server_key]), expected_peer_key=server_key)
    hello = state.hello()
    await socket.send_bytes(hello)
    message = await socket.receive()
    assert message.type is aiohttp.WSMsgType.BINARY
    auth = state.receive_hello(message.data)
    await socket.send_bytes(auth)
    message = await socket.receive()
    if message.type is not aiohttp.WSMsgType.BINARY:
        return hello, auth, None
    return hello, auth, state.receive_auth(message.data)


async def expect_closed(socket, timeout_s: float = 3.0) -> int:
    """Read until the server closes the socket; return the close code."""
    async with asyncio.timeout(timeout_s):
        while True:
            message = await socket.receive()
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return socket.close_code
            assert message.type is aiohttp.WSMsgType.BINARY, message


async def assert_exchange(sender: PeerNetwork, receiver: PeerNetwork, receiver_inbox: Inbox, payload: bytes):
    assert sender.send(receiver.public_key, payload)
    await receiver_inbox.wait_for(sender.public_key, payload)


# ---- sans-IO handshake ------------------------------------------------------------

def make_pair(dialer_key, acceptor_key, **acceptor_options):
    dialer = Handshake(chain_id=CHAIN_ID, genesis_hash=GENESIS_HASH, key=dialer_key,
                       validator_keys=frozenset([acceptor_key.public_key]),
                       expected_peer_key=acceptor_key.public_key)
    acceptor_options.setdefault("chain_id", CHAIN_ID)
    acceptor_options.setdefault("genesis_hash", GENESIS_HASH)
    acceptor_options.setdefault("validator_keys", frozenset([dialer_key.public_key]))
    acceptor = Handshake(key=acceptor_key, expected_peer_key=None, **acceptor_options)
    return dialer, acceptor


def test_handshake_proves_both_keys():
    small, large = sorted_keys(2)
    dialer, acceptor = make_pair(small, large)
    dialer_auth = dialer.receive_hello(acceptor.hello())
    acceptor_auth = acceptor.receive_hello(dialer.hello())
    assert dialer.receive_auth(acceptor_auth) == large.public_key
    assert acceptor.receive_auth(dialer_auth) == small.public_key
    assert dialer.peer_key == large.public_key and acceptor.peer_key == small.public_key


def test_handshake_signature_covers_the_documented_bytes():
    small, large = sorted_keys(2)
    dialer, acceptor = make_pair(small, large)
    dialer_hello, acceptor_hello = codec.decode(dialer.hello()), codec.decode(acceptor.hello())
    auth = codec.decode(dialer.receive_hello(acceptor.hello()))
    signed = codec.encode([CHAIN_ID, GENESIS_HASH, small.public_key, large.public_key,
                           dialer_hello["nonce"], acceptor_hello["nonce"]])
    assert signed == handshake.handshake_sign_bytes(CHAIN_ID, GENESIS_HASH, small.public_key, large.public_key,
                                                    dialer_hello["nonce"], acceptor_hello["nonce"])
    assert auth["sig"] == small.sign(b"ledger/p2p-handshake/v1", signed)


def test_handshake_refuses_a_replayed_auth():
    small, large = sorted_keys(2)
    dialer, acceptor = make_pair(small, large)
    recorded_hello = dialer.hello()
    recorded_auth = dialer.receive_hello(acceptor.hello())
    # A new acceptor session has a fresh nonce, so the recorded signature no longer fits.
    _, fresh_acceptor = make_pair(small, large)
    fresh_acceptor.receive_hello(recorded_hello)
    with pytest.raises(HandshakeError) as failure:
        fresh_acceptor.receive_auth(recorded_auth)
    assert failure.value.reason == handshake.BAD_SIGNATURE


def test_handshake_refuses_a_reflected_auth():
    small, large = sorted_keys(2)
    dialer, acceptor = make_pair(small, large)
    dialer.receive_hello(acceptor.hello())
    acceptor_auth_to_dialer = acceptor.receive_hello(dialer.hello())
    # An attacker holding only the acceptor's signature cannot pass it off as the dialer's.
    with pytest.raises(HandshakeError) as failure:
        acceptor.receive_auth(acceptor_auth_to_dialer)
    assert failure.value.reason == handshake.BAD_SIGNATURE


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("chain", "other-chain", handshake.WRONG_CHAIN),
    ("genesis", b"\x01" * 32, handshake.WRONG_CHAIN),
    ("version", 2, handshake.WRONG_VERSION),
    ("nonce", b"short", handshake.GARBAGE),
    ("type", "auth", handshake.GARBAGE),
])
def test_handshake_refuses_a_bad_hello(field, value, reason):
    small, large = sorted_keys(2)
    dialer, acceptor = make_pair(small, large)
    hello = codec.decode(dialer.hello())
    hello[field] = value
    with pytest.raises(HandshakeError) as failure:
        acceptor.receive_hello(codec.encode(hello))
    assert failure.value.reason == reason


def test_handshake_refuses_keys_outside_the_rules():
    small, middle, large = sorted_keys(3)
    # Unknown to the acceptor.
    _, acceptor = make_pair(small, large, validator_keys=frozenset([middle.public_key]))
    with pytest.raises(HandshakeError) as failure:
        acceptor.receive_hello(make_pair(small, large)[0].hello())
    assert failure.value.reason == handshake.UNKNOWN_KEY
    # A validator with the larger key must accept, not dial.
    _, acceptor = make_pair(large, small)
    with pytest.raises(HandshakeError) as failure:
        acceptor.receive_hello(make_pair(large, small)[0].hello())
    assert failure.value.reason == handshake.WRONG_DIRECTION
    # The dialer gets someone other than the validator it dialed.
    dialer, _ = make_pair(small, large)
    impostor = make_pair(small, middle)[1]
    with pytest.raises(HandshakeError) as failure:
        dialer.receive_hello(impostor.hello())
    assert failure.value.reason == handshake.UNEXPECTED_KEY
    # Our own hello sent back to us.
    dialer, _ = make_pair(small, large)
    with pytest.raises(HandshakeError) as failure:
        dialer.receive_hello(dialer.hello())
    assert failure.value.reason == handshake.SELF_CONNECTION
    # A peer that echoes our nonce as its own.
    dialer, acceptor = make_pair(small, large)
    echoed = codec.decode(dialer.hello())
    echoed["nonce"] = codec.decode(acceptor.hello())["nonce"]
    with pytest.raises(HandshakeError) as failure:
        acceptor.receive_hello(codec.encode(echoed))
    assert failure.value.reason == handshake.REFLECTED_NONCE


@pytest.mark.parametrize("frame", [b"", b"\xc1", b"not msgpack at all", codec.encode([1, 2]), b"\x80\x00"])
def test_handshake_refuses_undecodable_frames(frame):
    small, large = sorted_keys(2)
    _, acceptor = make_pair(small, large)
    with pytest.raises(HandshakeError) as failure:
        acceptor.receive_hello(frame)
    assert failure.value.reason == handshake.GARBAGE


def test_outbound_queue_is_bounded_by_bytes():
    queue = OutboundQueue(10)
    assert queue.put(b"12345") and queue.put(b"12345")
    assert not queue.put(b"1")
    assert queue.pop() == b"12345" and queue.bytes_queued == 5
    assert queue.put(b"abcde") and len(queue) == 2
    assert queue.clear() == 2 and queue.bytes_queued == 0


# ---- PeerNetwork over sockets -----------------------------------------------------

async def test_four_validators_link_every_pair_once_and_exchange(harness):
    keys = sorted_keys(4)
    networks, inboxes, _ = await harness.start_cluster(keys)
    for network in networks:
        assert await network.wait_connected(3, 5.0), network.status()
    for sender_index, sender in enumerate(networks):
        for receiver_index, receiver in enumerate(networks):
            if sender is not receiver:
                await assert_exchange(sender, receiver, inboxes[receiver_index],
                                      f"{sender_index}->{receiver_index}".encode())
    networks[0].broadcast(b"to everyone")
    for inbox in inboxes[1:]:
        await inbox.wait_for(keys[0].public_key, b"to everyone")
    # Exactly one link per pair: 6 pairs, each link counted once at each end, none replaced.
    assert sum(network.counters["links_established"] for network in networks) == 12
    for index, network in enumerate(networks):
        assert network.counters["links_replaced"] == 0
        assert network.counters["handshake_failed"] == 0
        assert sorted(network.connected()) == sorted(key.public_key for key in keys if key is not keys[index])
        directions = [entry["direction"] for entry in network.status()]
        assert directions.count("dial") == 3 - index and directions.count("accept") == index
        assert all(entry["connected"] for entry in network.status())


async def test_key_outside_the_validator_set_is_refused(harness):
    outsider, validator, server_key = sorted_keys(3)
    # The outsider's key is smaller than the server's, so only its being unknown can refuse it.
    server = await harness.start_network([validator, server_key], 1, {})
    socket = await harness.raw_socket(server.listen_port)
    _, _, proven_key = await raw_dial_handshake(socket, outsider, server_key.public_key)
    assert proven_key is None
    assert await expect_closed(socket) == aiohttp.WSCloseCode.POLICY_VIOLATION
    assert server.counters["handshake_unknown_key"] == 1
    assert server.counters["handshake_failed"] == 1
    assert server.connected() == []


async def test_wrong_chain_or_genesis_is_refused(harness):
    keys = sorted_keys(2)
    server = await harness.start_network(keys, 1, {})
    for chain_id, genesis_hash in (("other-chain", GENESIS_HASH), (CHAIN_ID, codec.sha256(b"other genesis"))):
        socket = await harness.raw_socket(server.listen_port)
        # The raw client's own check would refuse the server's hello first; send ours only.
        state = Handshake(chain_id=chain_id, genesis_hash=genesis_hash, key=keys[0],
                          validator_keys=frozenset([keys[1].public_key]), expected_peer_key=keys[1].public_key)
        await socket.send_bytes(state.hello())
        await expect_closed(socket)
    await eventually(lambda: server.counters["handshake_wrong_chain"] == 2)
    # Two full networks on different genesis hashes never link.
    ports = {1: server.listen_port}
    stranger = await harness.start_network(keys, 0, ports, genesis_hash=codec.sha256(b"fork"))
    await eventually(lambda: stranger.counters["handshake_wrong_chain"] >= 2
                     and server.counters["handshake_wrong_chain"] >= 4)  # it keeps redialing, and failing
    assert stranger.connected() == [] and server.connected() == []
    assert stranger.counters["handshake_ok"] == 0 and server.counters["handshake_ok"] == 0


async def test_replayed_handshake_is_refused(harness):
    keys = sorted_keys(2)
    server = await harness.start_network(keys, 1, {})
    socket = await harness.raw_socket(server.listen_port)
    recorded_hello, recorded_auth, proven_key = await raw_dial_handshake(socket, keys[0], keys[1].public_key)
    assert proven_key == keys[1].public_key
    await eventually(lambda: server.connected() == [keys[0].public_key])
    await socket.close()
    await eventually(lambda: server.connected() == [])
    # An eavesdropper replays the recorded frames on a new connection, without the key.
    replay = await harness.raw_socket(server.listen_port)
    await replay.send_bytes(recorded_hello)
    await replay.send_bytes(recorded_auth)
    assert await expect_closed(replay) == aiohttp.WSCloseCode.POLICY_VIOLATION
    await eventually(lambda: server.counters["handshake_bad_signature"] == 1)
    assert server.connected() == []


async def test_garbage_text_and_oversize_frames_are_dropped_and_the_network_still_works(harness):
    keys = sorted_keys(3)
    max_message_bytes = 64 * 1024
    # keys[0] is a validator that is not running: the raw client plays it, so the real
    # link between keys[1] (peer) and keys[2] (server) is never replaced.
    ports: dict[int, int] = {}
    server_inbox, peer_inbox = Inbox(), Inbox()
    server = await harness.start_network(keys, 2, ports, server_inbox, max_message_bytes=max_message_bytes)
    peer = await harness.start_network(keys, 1, ports, peer_inbox, max_message_bytes=max_message_bytes)
    assert await server.wait_connected(1, 5.0)
    port = server.listen_port

    socket = await harness.raw_socket(port)
    await socket.send_str("hello?")
    assert await expect_closed(socket) == aiohttp.WSCloseCode.UNSUPPORTED_DATA
    socket = await harness.raw_socket(port)
    await socket.send_bytes(b"\xc1 not msgpack")
    assert await expect_closed(socket) == aiohttp.WSCloseCode.UNSUPPORTED_DATA
    socket = await harness.raw_socket(port, max_msg_size=0)
    await socket.send_bytes(b"\x00" * (max_message_bytes + 1))
    await expect_closed(socket)
    await eventually(lambda: server.counters["garbage_dropped"] == 3)
    assert server.counters["oversize"] == 1
    assert server.counters["handshake_garbage"] == 3

    # Not a WebSocket at all.
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{HOST}:{port}/p2p") as response:
            assert response.status == 400
    assert server.counters["bad_upgrade"] == 1

    # After a good handshake: a text frame, then an oversize frame, each drop the link.
    for send_bad_frame in (lambda s: s.send_str("text"), lambda s: s.send_bytes(b"\x00" * (max_message_bytes + 1))):
        socket = await harness.raw_socket(port, max_msg_size=0)
        _, _, proven_key = await raw_dial_handshake(socket, keys[0], keys[2].public_key)
        assert proven_key == keys[2].public_key
        await send_bad_frame(socket)
        await expect_closed(socket)
    await eventually(lambda: server.counters["garbage_dropped"] == 5)
    assert server.counters["oversize"] == 2
    await eventually(lambda: server.connected() == [keys[1].public_key])

    # The link between the two real validators was never touched, and traffic flows.
    assert server.counters["links_established"] == 3 and server.counters["links_replaced"] == 0
    await assert_exchange(peer, server, server_inbox, b"still working")
    await assert_exchange(server, peer, peer_inbox, b"both ways")


async def test_newest_link_from_a_validator_replaces_the_old_one(harness):
    keys = sorted_keys(2)
    inbox = Inbox()
    server = await harness.start_network(keys, 1, {}, inbox)
    first = await harness.raw_socket(server.listen_port)
    assert (await raw_dial_handshake(first, keys[0], keys[1].public_key))[2] == keys[1].public_key
    second = await harness.raw_socket(server.listen_port)
    assert (await raw_dial_handshake(second, keys[0], keys[1].public_key))[2] == keys[1].public_key
    assert await expect_closed(first) == aiohttp.WSCloseCode.OK
    assert server.counters["links_replaced"] == 1
    assert server.connected() == [keys[0].public_key]
    # The same peer, a new link: a reader comparing generations sees it came back.
    assert server.link_generations() == {keys[0].public_key: 2}
    assert server.send(keys[0].public_key, b"to the new link")
    message = await asyncio.wait_for(second.receive(), 3.0)
    assert message.data == b"to the new link"
    await second.send_bytes(b"from the new link")
    await inbox.wait_for(keys[0].public_key, b"from the new link")


async def test_stopped_peer_is_redialed_within_the_backoff(harness):
    keys = sorted_keys(2)
    networks, inboxes, ports = await harness.start_cluster(keys, reconnect_min_s=0.02, reconnect_max_s=0.1)
    dialer, acceptor = networks
    assert await dialer.wait_connected(1, 5.0)
    assert dialer.link_generations() == {keys[1].public_key: 1}

    # The acceptor goes away and comes back on the same port: the dialer redials.
    await acceptor.stop()
    await eventually(lambda: dialer.connected() == [])
    assert not dialer.send(keys[1].public_key, b"nobody there")
    await eventually(lambda: dialer.counters["dial_failed"] >= 2)  # redialing the closed port
    acceptor_inbox = Inbox()
    acceptor = await harness.start_network(keys, 1, ports, acceptor_inbox, listen_port=ports[1])
    loop = asyncio.get_running_loop()
    restarted_at = loop.time()
    assert await dialer.wait_connected(1, 2.0)
    assert loop.time() - restarted_at < 1.0  # backoff is capped at 0.1 s
    assert dialer.counters["reconnects"] == 1
    assert dialer.link_generations() == {keys[1].public_key: 2}
    await assert_exchange(dialer, acceptor, acceptor_inbox, b"after restart")

    # The dialer goes away and a fresh instance with the same key links again.
    await dialer.stop()
    await eventually(lambda: acceptor.connected() == [])
    dialer_inbox = Inbox()
    dialer = await harness.start_network(keys, 0, ports, dialer_inbox, reconnect_max_s=0.1)
    assert await acceptor.wait_connected(1, 2.0)
    await assert_exchange(acceptor, dialer, dialer_inbox, b"hello again")
    assert acceptor.counters["reconnects"] == 1


async def test_full_queue_refuses_and_counts(harness):
    keys = sorted_keys(2)
    networks, inboxes, _ = await harness.start_cluster(keys, queue_bytes_max=1000, max_message_bytes=2048)
    sender, receiver = networks
    assert await sender.wait_connected(1, 5.0) and await receiver.wait_connected(1, 5.0)
    payload = b"x" * 300
    # No await in between: the sender task cannot drain, so the bound is exact.
    accepted = [sender.send(keys[1].public_key, payload) for _ in range(5)]
    assert accepted == [True, True, True, False, False]
    assert sender.counters["queue_full"] == 2
    assert not sender.send(keys[1].public_key, b"y" * 4096)
    assert sender.counters["send_too_large"] == 1
    assert not sender.send(b"\x00" * 32, payload)
    assert sender.counters["send_not_connected"] == 1
    await eventually(lambda: len(inboxes[1].messages) == 3)
    assert sender.send(keys[1].public_key, payload)  # drained: room again
    await eventually(lambda: len(inboxes[1].messages) == 4)
    assert sender.counters["messages_out"] == 4 and receiver.counters["messages_in"] == 4


async def test_silent_peer_times_out(harness):
    keys = sorted_keys(2)
    server = await harness.start_network(keys, 1, {}, handshake_timeout_s=0.2)
    silent = await harness.raw_socket(server.listen_port)
    assert await expect_closed(silent) == aiohttp.WSCloseCode.POLICY_VIOLATION
    assert server.counters["handshake_timeout"] == 1
    assert server.connected() == []


async def test_failing_callback_keeps_the_link(harness):
    keys = sorted_keys(2)

    def failing_on_message(sender_key, payload):
        raise ValueError("a bug in the node")

    server = await harness.start_network(keys, 1, {}, failing_on_message)
    socket = await harness.raw_socket(server.listen_port)
    assert (await raw_dial_handshake(socket, keys[0], keys[1].public_key))[2] == keys[1].public_key
    await socket.send_bytes(b"makes the callback raise")
    await eventually(lambda: server.counters["on_message_errors"] == 1)
    assert server.connected() == [keys[0].public_key]
    assert server.send(keys[0].public_key, b"still linked")
    assert (await asyncio.wait_for(socket.receive(), 3.0)).data == b"still linked"


async def test_dead_link_is_detected_by_heartbeat(harness):
    keys = sorted_keys(2)
    server = await harness.start_network(keys, 1, {}, heartbeat_s=0.2)
    async with aiohttp.ClientSession() as session:
        # autoping off and nobody reading: the server's pings go unanswered, like a hung peer.
        socket = await session.ws_connect(f"http://{HOST}:{server.listen_port}/p2p", autoping=False)
        state = Handshake(chain_id=CHAIN_ID, genesis_hash=GENESIS_HASH, key=keys[0],
                          validator_keys=frozenset([keys[1].public_key]), expected_peer_key=keys[1].public_key)
        await socket.send_bytes(state.hello())
        await socket.send_bytes(state.receive_hello((await socket.receive()).data))
        state.receive_auth((await socket.receive()).data)
        assert await server.wait_connected(1, 2.0)
        await eventually(lambda: server.connected() == [])
        assert server.counters["heartbeat_timeouts"] == 1
        await socket.close()


async def test_backoff_jitter_comes_from_the_injected_random():
    keys = sorted_keys(2)
    options = dict(chain_id=CHAIN_ID, genesis_hash=GENESIS_HASH, key=keys[0], name="node0", listen_host=HOST,
                   listen_port=0, peers=[], on_message=Inbox())
    first = PeerNetwork(rng=random.Random(7), **options)
    second = PeerNetwork(rng=random.Random(7), **options)
    delays = [first._backoff_sleep_s(0.4) for _ in range(20)]
    assert delays == [second._backoff_sleep_s(0.4) for _ in range(20)]
    assert all(0.2 <= delay <= 0.4 for delay in delays) and len(set(delays)) == 20


async def test_stop_leaves_no_tasks_sessions_or_sockets(harness):
    loop = asyncio.get_running_loop()
    reported = []
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        keys = sorted_keys(3)
        networks, inboxes, _ = await harness.start_cluster(keys)
        for network in networks:
            assert await network.wait_connected(2, 5.0)
        networks[0].broadcast(b"in flight at shutdown")
        # One dialer keeps redialing a peer that is not there.
        lonely = await harness.start_network(sorted_keys(2), 0, {1: networks[0].listen_port})
        for network in [*networks, lonely]:
            await network.stop()
            await network.stop()  # idempotent
        await asyncio.sleep(0)
        leftover = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        assert leftover == []
        gc.collect()
        await asyncio.sleep(0)
        assert reported == []  # no "Unclosed client session", no "Task was destroyed"
    finally:
        loop.set_exception_handler(previous_handler)
