"""aibridge.listener: every queued connection is accepted at one wakeup, not one per
loop iteration (libuv's policy since 1.45, which left a burst of new connections
waiting seconds in the accept queue of a busy gateway)."""

import asyncio
import socket

from aibridge.listener import BatchAcceptServer, new_event_loop

QUEUED = 100


class _Counting(asyncio.Protocol):
    made = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _Counting.made += 1


def _listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def test_a_burst_of_queued_connections_is_accepted_within_a_few_iterations() -> None:
    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        sock = _listening_socket()
        server = await loop.create_server(_Counting, sock=sock, backlog=1024)
        assert isinstance(server, BatchAcceptServer)
        # Blocking connects complete in the kernel: all of them wait in the accept queue
        # before the loop runs again.
        clients = [socket.create_connection(sock.getsockname()) for _ in range(QUEUED)]
        _Counting.made = 0
        iterations = 0
        while _Counting.made < QUEUED and iterations < 20:
            await asyncio.sleep(0)
            iterations += 1
        made = _Counting.made
        server.close()
        await server.wait_closed()
        for c in clients:
            c.close()
        sock.close()
        return made, iterations

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        made, iterations = runner.run(main())
    assert made == QUEUED
    assert iterations <= 5  # one-per-iteration accepting would need about QUEUED


def test_a_closed_server_accepts_nothing_more() -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        sock = _listening_socket()
        server = await loop.create_server(_Counting, sock=sock, backlog=16)
        assert server.is_serving()
        server.close()
        assert not server.is_serving()
        _Counting.made = 0
        late = socket.create_connection(sock.getsockname())  # queued by the kernel only
        for _ in range(5):
            await asyncio.sleep(0)
        late.close()
        sock.close()
        return _Counting.made

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        assert runner.run(main()) == 0


def test_tls_and_host_port_servers_are_uvloops_own() -> None:
    async def main() -> str:
        server = await asyncio.get_running_loop().create_server(
            asyncio.Protocol, host="127.0.0.1", port=0
        )
        kind = type(server).__name__
        server.close()
        await server.wait_closed()
        return kind

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        assert runner.run(main()) != "BatchAcceptServer"
