"""The floor: the least a Python proxy can do (raw ASGI + uvicorn/uvloop/httptools +
one aiohttp session, a round-robin key, bytes passed through, SSE relayed chunk by chunk).

``python -m bench.floor_proxy --port P --route openai=http://127.0.0.1:M/v1 ...``:
``/<route>/<rest>`` goes to ``<base>/<rest>`` with the next key in the credential header.
"""

import argparse
import itertools

import aiohttp
import uvicorn

_DROP = {b"host", b"authorization", b"x-api-key", b"content-length", b"connection"}
_HOP = {"content-length", "transfer-encoding", "connection", "keep-alive"}


class Floor:
    def __init__(self, routes: dict[str, str], keys: list[str]) -> None:
        self.routes, self.keys = routes, itertools.cycle(keys)
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            await receive()  # startup
            connector = aiohttp.TCPConnector(limit=0)
            self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
            await send({"type": "lifespan.startup.complete"})
            await receive()  # shutdown
            await self.session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        route, _, rest = scope["path"][1:].partition("/")
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k not in _DROP}
        key = next(self.keys)
        if route == "anthropic":
            headers["x-api-key"] = key
        else:
            headers["authorization"] = "Bearer " + key
        assert self.session is not None
        url = self.routes[route] + "/" + rest
        async with self.session.post(url, data=body, headers=headers) as r:
            stream = r.content_type == "text/event-stream"
            out = [
                (k.lower().encode(), v.encode())
                for k, v in r.headers.items()
                if k.lower() not in _HOP or (k.lower() == "content-length" and not stream)
            ]
            await send({"type": "http.response.start", "status": r.status, "headers": out})
            if not stream:
                await send({"type": "http.response.body", "body": await r.read()})
                return
            async for chunk in r.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--route", action="append", default=[], help="NAME=BASE_URL")
    parser.add_argument("--keys", default="bench-key-0,bench-key-1")
    args = parser.parse_args()
    routes = dict(r.split("=", 1) for r in args.route)
    app = Floor(routes, args.keys.split(","))
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        # uvloop, accepting every queued connection per wakeup as aibridge does: without it
        # a burst of new connections waits seconds in the accept queue (aibridge.listener).
        loop="aibridge.listener:new_event_loop",
        http="httptools",
        ws="none",
        lifespan="on",
        log_level="warning",
        access_log=False,
    )
    uvicorn.Server(config).run(sockets=[config.bind_socket()])


if __name__ == "__main__":
    main()
