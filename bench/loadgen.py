"""A small bounded load generator, for machines without ``wrk`` (CI).

``python -m bench.loadgen --url URL --body-file F [--header 'k: v'] -c 4 -d 1``
POSTs the body over ``c`` keep-alive connections until the duration or the request
count runs out, and prints one ``BENCHJSON {...}`` line in the same shape as
``bench/wrk/post.lua``. Its own CPU cost is far above wrk's, so at high concurrency
it, not the target, is the bottleneck: use it for smoke runs, not for figures.
"""

import argparse
import asyncio
import json
import time

import aiohttp


def percentile(ordered: list[float], p: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
    return ordered[index]


async def generate(
    url: str,
    body: bytes,
    headers: dict[str, str],
    concurrency: int,
    duration: float,
    max_requests: int | None,
) -> dict[str, object]:
    latencies: list[float] = []
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    received = 0
    issued = 0
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=0)
    started = time.perf_counter()
    deadline = started + duration
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal received, issued
            while time.perf_counter() < deadline:
                if max_requests is not None and issued >= max_requests:
                    return
                issued += 1
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        data = await response.read()
                        if response.status >= 400:
                            errors["status"] += 1
                except TimeoutError:
                    errors["timeout"] += 1
                    continue
                except aiohttp.ClientError:
                    errors["read"] += 1
                    continue
                latencies.append((time.perf_counter() - t0) * 1000)
                received += len(data)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    mean = sum(latencies) / len(latencies) if latencies else 0.0
    return {
        "requests": len(latencies),
        "duration_s": elapsed,
        "bytes": received,
        "errors": errors,
        "latency_ms": {
            "min": latencies[0] if latencies else 0.0,
            "mean": mean,
            "max": latencies[-1] if latencies else 0.0,
            "p50": percentile(latencies, 50),
            "p90": percentile(latencies, 90),
            "p99": percentile(latencies, 99),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--header", action="append", default=[], help="'name: value'")
    parser.add_argument("-c", "--concurrency", type=int, default=4)
    parser.add_argument("-d", "--duration", type=float, default=1.0)
    parser.add_argument("-n", "--max-requests", type=int, default=None)
    args = parser.parse_args()
    with open(args.body_file, "rb") as f:
        body = f.read()
    headers = {"content-type": "application/json"}
    for line in args.header:
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        result = runner.run(
            generate(args.url, body, headers, args.concurrency, args.duration, args.max_requests)
        )
    print("BENCHJSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
