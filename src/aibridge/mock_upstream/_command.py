"""Serving the mock from the command line: ``aibridge mock-upstream``."""

from __future__ import annotations

from typing import Annotated

import typer
import uvicorn

from aibridge.listener import LOOP_FACTORY

from ._app import MockUpstream
from ._behaviour import parse_behaviour_spec

__all__ = ["mock_upstream_command", "serve_mock"]


def _config(host: str, port: int, mock: MockUpstream) -> uvicorn.Config:
    return uvicorn.Config(
        mock,
        host=host,
        port=port,
        loop=LOOP_FACTORY,
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
    )


async def serve_mock(host: str, port: int, mock: MockUpstream) -> None:
    """Serve ``mock`` on ``host:port`` in the running (uvloop or asyncio) loop until stopped."""
    await uvicorn.Server(_config(host, port, mock)).serve()


def mock_upstream_command(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8090,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    key: Annotated[
        list[str] | None,
        typer.Option(
            "--key",
            help="Script a key: KEY=KIND[:PARAM], e.g. k0=rate_limit:5, k1=unauthorized, "
            "k2=slow:0.5, k3=cut:3 ('*' for every other key). Repeatable.",
        ),
    ] = None,
    chunks: Annotated[int, typer.Option(help="Content deltas per streamed answer.")] = 20,
    chunk_delay: Annotated[float, typer.Option(help="Seconds between SSE frames.")] = 0.0,
) -> None:
    """Run a fake OpenAI + Anthropic upstream (OpenAI base URL: http://HOST:PORT/v1)."""
    behaviours = {}
    for spec in key or []:
        try:
            name, behaviour = parse_behaviour_spec(spec)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--key") from exc
        behaviours[name] = behaviour
    mock = MockUpstream(behaviours, chunks=chunks, chunk_delay=chunk_delay)
    typer.echo(f"mock upstream on http://{host}:{port} (OpenAI base URL http://{host}:{port}/v1)")
    # uvicorn.Server.run installs signal handlers and the loop itself; the socket is bound
    # here so the loop accepts every queued connection per wakeup (see aibridge.listener).
    config = _config(host, port, mock)
    uvicorn.Server(config).run(sockets=[config.bind_socket()])
