"""ServerThread, the test and demo server: what it owns is released on every path."""

import asyncio
import os

from aibridge.server_thread import ServerThread


def test_server_thread_closes_its_socket_when_uvicorn_refuses_the_options() -> None:
    """ServerThread binds before building uvicorn's config: a bad option must not leak
    the bound socket."""
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        try:
            ServerThread(asyncio.Protocol, no_such_uvicorn_option=True).start()
        except TypeError:
            pass
        else:
            raise AssertionError("uvicorn took an unknown option")
    assert len(os.listdir("/proc/self/fd")) == before
