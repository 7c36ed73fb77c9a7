"""``make bench``: direct upstream vs the floor proxy vs aibridge, back to back.

Every target is measured against the same mock upstream processes in the same
minute, so the ratios in ``BENCHMARKS.md`` hold on a noisy machine even when the
absolute figures drift. ``--soak`` measures RSS growth from 10k to 100k requests.
See ``python -m bench.run --help``.
"""

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procs, report

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LUA = Path(__file__).resolve().parent / "wrk" / "post.lua"
RESULTS = ROOT / "bench" / "results"

KEYS = ("bench-key-0", "bench-key-1")
FAIL_KEY = "bench-fail-0"  # the mock answers it 429 with retry-after: 1e-06, forever
GATEWAY_TOKEN = "gw-bench-token"
PROMPT = "Say hello in one short sentence."
WRK_INSTALL = (
    "wrk is not installed: `apt-get install -y wrk` (Debian/Ubuntu), `brew install wrk` "
    "(macOS), or build https://github.com/wg/wrk. Falling back to the built-in Python load "
    "generator (bench/loadgen.py): it costs far more CPU than wrk and shares the core with "
    "the target, so its figures are only good for a smoke run."
)


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    api: str  # openai | anthropic
    stream: bool
    upstream: str  # fast | paced
    route: str  # aibridge provider / floor route
    concurrency: tuple[int, ...]
    targets: tuple[str, ...] = ("direct", "floor", "aibridge")

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.api == "openai" else "/v1/messages"

    def body(self) -> bytes:
        messages = [{"role": "user", "content": PROMPT}]
        if self.api == "openai":
            data: dict[str, Any] = {"model": "gpt-4o-mini", "messages": messages}
        else:
            data = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": messages}
        if self.stream:
            data["stream"] = True
            if self.api == "openai":
                # Asked by the client, so every target relays the same frames (without
                # it aibridge would add it, and the upstream would send one more frame).
                data["stream_options"] = {"include_usage": True}
        return json.dumps(data).encode()


SCENARIOS = (
    Scenario("chat_json", "OpenAI chat, JSON", "openai", False, "fast", "openai", (1, 16, 64, 256)),
    Scenario(
        "chat_sse", "OpenAI chat, SSE 20 chunks", "openai", True, "fast", "openai", (1, 16, 64, 256)
    ),
    Scenario(
        "chat_sse_paced",
        "OpenAI chat, SSE 20 chunks 10 ms apart",
        "openai",
        True,
        "paced",
        "paced",
        (256,),
    ),
    Scenario(
        "messages_json", "Anthropic messages, JSON", "anthropic", False, "fast", "anthropic", (16,)
    ),
    Scenario(
        "messages_sse", "Anthropic messages, SSE", "anthropic", True, "fast", "anthropic", (16,)
    ),
    Scenario(
        "failover_json",
        "OpenAI chat, JSON, key 0 answers 429",
        "openai",
        False,
        "fast",
        "failover",
        (16,),
        ("aibridge",),
    ),
)


@dataclass
class Target:
    name: str
    base: str  # URL without the API path
    proc: procs.Proc | None  # whose process tree is measured
    token: str
    prefixed: bool  # /<route>/v1/... (floor, aibridge) vs /v1/... (direct, peers)
    upstream: dict[str, procs.Proc] = field(default_factory=dict)

    def request(self, s: Scenario, mocks: dict[str, procs.Proc]) -> tuple[str, list[str]]:
        base = self.base
        if self.name == "direct":
            base = f"http://127.0.0.1:{mocks[s.upstream].port}"
        url = base + (f"/{s.route}" if self.prefixed else "") + s.path
        if s.api == "openai":
            headers = [f"Authorization: Bearer {self.token}"]
        else:
            headers = [f"x-api-key: {self.token}", "anthropic-version: 2023-06-01"]
            if self.proc is None:  # a peer: either header may be the one it reads
                headers.append(f"Authorization: Bearer {self.token}")
        return url, headers

    def measured(self, s: Scenario, mocks: dict[str, procs.Proc]) -> procs.Proc | None:
        return mocks[s.upstream] if self.name == "direct" else self.proc


# -- load generation -------------------------------------------------------------------


class LoadGen:
    def __init__(self, kind: str, cpus: str | None, workdir: Path) -> None:
        self.kind = kind
        self.cpus = cpus
        self.workdir = workdir

    def version(self) -> str:
        if self.kind == "python":
            return f"bench/loadgen.py (aiohttp {importlib.metadata.version('aiohttp')})"
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
        return (out.stdout + out.stderr).strip().splitlines()[0]

    def run(
        self,
        url: str,
        headers: list[str],
        body: bytes,
        concurrency: int,
        duration: float,
        max_requests: int | None = None,
    ) -> dict[str, Any]:
        body_file = self.workdir / f"body-{abs(hash(body))}.json"
        if not body_file.exists():
            body_file.write_bytes(body)
        if self.kind == "wrk":
            argv = [
                "wrk",
                "-t1",
                f"-c{concurrency}",
                f"-d{max(1, round(duration))}s",  # wrk takes whole seconds
                "--timeout",
                "30s",
                "-s",
                str(LUA),
                url,
            ]
            env = {**os.environ, "BENCH_BODY_FILE": str(body_file)}
            env["BENCH_HEADERS"] = "\n".join(headers)
        else:
            argv = [
                sys.executable,
                "-m",
                "bench.loadgen",
                "--url",
                url,
                "--body-file",
                str(body_file),
                "-c",
                str(concurrency),
                "-d",
                str(duration),
            ]
            argv += [a for h in headers for a in ("--header", h)]
            if max_requests is not None:
                argv += ["-n", str(max_requests)]
            env = dict(os.environ)
        out = subprocess.run(
            procs.pinned(argv, self.cpus),
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=duration + 60,
            check=False,
        )
        for line in out.stdout.splitlines():
            if line.startswith("BENCHJSON "):
                result: dict[str, Any] = json.loads(line[len("BENCHJSON ") :])
                return result
        raise RuntimeError(f"{self.kind} gave no result: {out.stdout[-1000:]}{out.stderr[-1000:]}")


# -- the processes ---------------------------------------------------------------------


@dataclass
class Pin:
    upstream: str | None
    target: str | None
    loadgen: str | None

    def describe(self) -> str:
        if self.target is None:
            return "no pinning"
        if self.loadgen == self.upstream:
            return (
                f"mock upstream and load generator on CPU {self.upstream}; the target proxy "
                f"alone on CPU {self.target}"
            )
        return (
            f"mock upstream on CPU {self.upstream}; load generator and the target proxy "
            f"share CPU {self.target}"
        )


def choose_pin(enabled: bool, layout: str = "shared") -> Pin:
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled or len(cpus) < 2 or shutil.which("taskset") is None:
        return Pin(None, None, None)
    first, rest = str(cpus[0]), ",".join(str(c) for c in cpus[1:])
    if layout == "target-alone":
        # The outside world (client and provider) on one core, the gateway on the other,
        # as it would be deployed; "direct" then has client and mock on one core.
        return Pin(first, rest, first)
    # The mock stands in for a remote provider: it gets a core of its own so it is
    # never what limits a run. The client and the proxy share the other core(s).
    return Pin(first, rest, rest)


def aibridge_config(tmp: Path, port: int, fast: int, paced: int) -> Path:
    keys = json.dumps(list(KEYS))
    fast_url, paced_url = f"http://127.0.0.1:{fast}", f"http://127.0.0.1:{paced}"
    text = f"""\
server: {{host: 127.0.0.1, port: {port}}}
auth:
  tokens:
    - {{user: bench, token: {GATEWAY_TOKEN}}}
    - {{user: other, token: gw-other-token}}
database: sqlite:///{tmp}/usage.db
log_requests: true
providers:
  - {{name: openai, type: openai, base_url: {fast_url}/v1, keys: {keys}, strategy: round_robin}}
  - {{name: anthropic, type: anthropic, base_url: {fast_url}, keys: {keys},
      strategy: round_robin}}
  - {{name: paced, type: openai, base_url: {paced_url}/v1, keys: {keys}, strategy: round_robin}}
  - {{name: failover, type: openai, base_url: {fast_url}/v1, keys: [{FAIL_KEY}, {KEYS[1]}],
      strategy: primary}}
"""
    path = tmp / "aibridge.yaml"
    path.write_text(text)
    return path


@contextlib.contextmanager
def processes(
    tmp: Path, pin: Pin, targets: set[str], mock_port: int | None = None
) -> Iterator[tuple[dict[str, procs.Proc], dict[str, procs.Proc]]]:
    started: list[procs.Proc] = []
    try:
        mocks: dict[str, procs.Proc] = {}
        aibridge = str(BIN / "aibridge")
        for name, extra in (
            ("fast", ["--key", f"{FAIL_KEY}=rate_limit:retry_after=0.000001"]),
            ("paced", ["--chunks", "20", "--chunk-delay", "0.01"]),
        ):
            port = mock_port if name == "fast" and mock_port else procs.free_port()
            argv = [aibridge, "mock-upstream", "--port", str(port), *extra]
            mocks[name] = procs.start(f"mock-{name}", argv, port, tmp, pin.upstream)
            started.append(mocks[name])
        out: dict[str, procs.Proc] = {}
        if "floor" in targets:
            port = procs.free_port()
            argv = [sys.executable, "-m", "bench.floor_proxy", "--port", str(port)]
            argv += [f"--route={r}=http://127.0.0.1:{mocks['fast'].port}" for r in KEY_ROUTES]
            argv += [f"--route=paced=http://127.0.0.1:{mocks['paced'].port}"]
            out["floor"] = procs.start("floor", argv, port, tmp, pin.target)
            started.append(out["floor"])
        if "aibridge" in targets:
            port = procs.free_port()
            config = aibridge_config(tmp, port, mocks["fast"].port, mocks["paced"].port)
            argv = [aibridge, "serve", "--config", str(config), "--log-level", "info"]
            out["aibridge"] = procs.start(
                "aibridge", argv, port, tmp, pin.target, stdout=tmp / "aibridge-requests.log"
            )
            started.append(out["aibridge"])
        yield mocks, out
    finally:
        for proc in reversed(started):
            proc.stop()


KEY_ROUTES = ("openai", "anthropic", "failover")


def mock_stats(mock: procs.Proc) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{mock.port}/_mock/stats", timeout=5) as r:
        stats: dict[str, Any] = json.load(r)
        return stats


# -- one measurement -------------------------------------------------------------------


def measure(
    gen: LoadGen,
    target: Target,
    s: Scenario,
    c: int,
    mocks: dict[str, procs.Proc],
    duration: float,
    warmup: float,
    profile_dir: Path | None = None,
    settle: float = 0.5,
) -> dict[str, Any]:
    url, headers = target.request(s, mocks)
    body = s.body()
    if warmup > 0:
        gen.run(url, headers, body, c, warmup)
        # wrk ends the warm-up by closing its connections with requests in flight: let the
        # target finish with those (a paced stream lasts ~0.3 s) before the measured run
        # opens its own, so the measurement starts in the steady state for every target.
        time.sleep(settle)
    proc = target.measured(s, mocks)
    mock = mocks[s.upstream]
    stats0 = mock_stats(mock)
    spy = None
    if profile_dir is not None and target.name in ("aibridge", "floor") and proc is not None:
        raw = profile_dir / f"{target.name}-{s.name}-c{c}.txt"
        spy = subprocess.Popen(
            [str(BIN / "py-spy"), "record", "--nonblocking", "-r", "250", "-f", "raw",
             "-d", str(max(1, round(duration))), "-o", str(raw), "--pid", str(proc.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    cpu0, mock0, t0 = (proc.cpu() if proc else 0.0), mock.cpu(), time.monotonic()
    res = gen.run(url, headers, body, c, duration)
    cpu1, mock1, t1 = (proc.cpu() if proc else 0.0), mock.cpu(), time.monotonic()
    stats1 = mock_stats(mock)
    if spy is not None:
        spy.wait(30)
    wall = t1 - t0
    n = max(res["requests"], 1)
    row: dict[str, Any] = {
        "scenario": s.name,
        "target": target.name,
        "concurrency": c,
        "requests": res["requests"],
        "rps": res["requests"] / res["duration_s"] if res["duration_s"] else 0.0,
        "p50_ms": res["latency_ms"]["p50"],
        "p90_ms": res["latency_ms"]["p90"],
        "p99_ms": res["latency_ms"]["p99"],
        "errors": sum(res["errors"].values()),
        "cpu_s": cpu1 - cpu0 if proc else None,
        "cpu_us_per_req": (cpu1 - cpu0) / n * 1e6 if proc else None,
        "cpu_util": (cpu1 - cpu0) / wall if proc else None,
        "rss_mib": proc.rss() if proc else None,
        "mock_cpu_us_per_req": (mock1 - mock0) / n * 1e6,
        "mock_cpu_util": (mock1 - mock0) / wall,
        "upstream_requests": stats1["requests"] - stats0["requests"],
    }
    if s.route == "failover":
        fails = stats1["by_key"].get(FAIL_KEY, 0) - stats0["by_key"].get(FAIL_KEY, 0)
        row["upstream_429"] = fails
        row["upstream_429_per_req"] = fails / n
    return row


def fmt_row(r: dict[str, Any]) -> str:
    cpu = f"{r['cpu_us_per_req']:7.0f}" if r["cpu_us_per_req"] is not None else "      -"
    return (
        f"{r['scenario']:15} c={r['concurrency']:<4} {r['target']:10} "
        f"{r['rps']:8.0f} req/s "
        f"p50 {r['p50_ms']:7.2f} p99 {r['p99_ms']:7.2f} ms  cpu {cpu} us/req  "
        f"mock {r['mock_cpu_util'] * 100:4.0f}%  err {r['errors']}"
    )


# -- the run ---------------------------------------------------------------------------


def machine(gen: LoadGen, pin: Pin, args: argparse.Namespace) -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    libs = [
        "aibridge",
        "uvicorn",
        "uvloop",
        "httptools",
        "aiohttp",
        "orjson",
        "structlog",
        "prometheus_client",
    ]
    versions = {}
    for lib in libs:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[lib] = importlib.metadata.version(lib)
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "loadgen": gen.version(),
        "pinning": pin.describe(),
        "duration_s": args.duration,
        "rounds": args.rounds,
        "warmup_s": args.warmup,
        "settle_s": args.settle,
        "load_before": _loadavg(),
    }


def _loadavg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def parse_peers(args: argparse.Namespace) -> list[Target]:
    pids = dict(p.split("=", 1) for p in args.peer_pid)
    peers = []
    for spec in args.peer:
        name, _, url = spec.partition("=")
        proc = None
        if name in pids:
            popen: Any = _Attached(int(pids[name]))
            proc = procs.Proc(name, popen, 0, Path(os.devnull))
        peers.append(Target(name, url.rstrip("/"), proc, args.peer_token, False))
    return peers


class _Attached:
    """A process we did not start: measured, never signalled."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def poll(self) -> int:
        return 0


def run_suite(args: argparse.Namespace, gen: LoadGen, pin: Pin, tmp: Path) -> dict[str, Any]:
    chosen = [s for s in SCENARIOS if not args.scenario or s.name in args.scenario]
    wanted = set(args.targets.split(","))
    peers = parse_peers(args)
    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + args.max_seconds
    with processes(tmp, pin, wanted, args.mock_port) as (mocks, started):
        targets: list[Target] = []
        if "direct" in wanted:
            targets.append(Target("direct", "", None, KEYS[0], False))
        if "floor" in started:
            targets.append(Target("floor", url_of(started["floor"]), started["floor"], "x", True))
        if "aibridge" in started:
            gw = started["aibridge"]
            targets.append(Target("aibridge", url_of(gw), gw, GATEWAY_TOKEN, True))
        targets += peers
        for s in chosen:
            for c in args.concurrency or s.concurrency:
                rounds = args.rounds if (s.name, c) in report.TARGET_CELLS else 1
                for n in range(rounds):
                    for t in targets:
                        if t.name not in s.targets and not (t in peers and s.upstream == "fast"):
                            continue
                        if s.route == "failover" and t in peers:
                            continue
                        if time.monotonic() > deadline:
                            print(f"bench: --max-seconds {args.max_seconds} reached; stopping")
                            return {"rows": rows, "truncated": True}
                        row = measure(
                            gen,
                            t,
                            s,
                            c,
                            mocks,
                            args.duration,
                            args.warmup,
                            args.profile,
                            args.settle,
                        )
                        row["round"] = n
                        rows.append(row)
                        print(fmt_row(row), flush=True)
        sizes = {n: p.rss() for n, p in {**mocks, **started}.items()}
    return {"rows": rows, "rss_end_mib": sizes}


def url_of(proc: procs.Proc) -> str:
    return f"http://127.0.0.1:{proc.port}"


def run_soak(args: argparse.Namespace, gen: LoadGen, pin: Pin, tmp: Path) -> dict[str, Any]:
    s = next(x for x in SCENARIOS if x.name == "chat_json")
    c = args.soak_concurrency
    points: list[dict[str, Any]] = []
    total = 0
    started_at = time.monotonic()
    deadline = started_at + args.max_seconds
    with processes(tmp, pin, {"aibridge"}) as (mocks, started):
        gw = started["aibridge"]
        target = Target("aibridge", url_of(gw), gw, GATEWAY_TOKEN, True)
        url, headers = target.request(s, mocks)
        rss_start = gw.rss()
        rate = None
        for goal in (args.soak_first, args.soak_total):
            while total < goal and time.monotonic() < deadline:
                left = goal - total
                # Size each chunk to land near the goal once the rate is known.
                chunk = 1.0 if rate is None else min(5.0, max(0.3, left / rate))
                res = gen.run(url, headers, s.body(), c, chunk, max_requests=left)
                if res["requests"] == 0:
                    raise RuntimeError(f"soak: no requests completed: {res}")
                rate = res["requests"] / res["duration_s"]
                total += res["requests"]
            points.append({"requests": total, "rss_mib": gw.rss()})
            print(f"soak: {total} requests, aibridge RSS {points[-1]['rss_mib']:.1f} MiB")
    first, last = points[0], points[-1]
    return {
        "concurrency": c,
        "rss_start_mib": rss_start,
        "points": points,
        "ratio": last["rss_mib"] / first["rss_mib"],
        "seconds": time.monotonic() - started_at,
        "complete": last["requests"] >= args.soak_total,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up before each")
    p.add_argument(
        "--settle",
        type=float,
        default=0.5,
        help="seconds between the warm-up and the measured run (the warm-up's abandoned "
        "requests finish first)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds for the cells the targets are judged on (each round runs every target "
        "back to back; verdicts take the median of the per-round ratios)",
    )
    p.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument(
        "--scenario",
        action="append",
        default=[],
        help=f"repeatable; default all: {', '.join(s.name for s in SCENARIOS)}",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        action="append",
        default=[],
        help="repeatable; overrides each scenario's own list",
    )
    p.add_argument("--targets", default="direct,floor,aibridge")
    p.add_argument("--peer", action="append", default=[], help="NAME=URL of another gateway")
    p.add_argument("--peer-pid", action="append", default=[], help="NAME=PID to measure CPU")
    p.add_argument("--peer-token", default="sk-bench-master")
    p.add_argument("--mock-port", type=int, default=None, help="fixed port of the fast mock")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    p.add_argument(
        "--pin-layout",
        choices=("shared", "target-alone"),
        default="shared",
        help="shared: mock alone, client+target share a core; target-alone: client+mock "
        "share a core, the target has the other",
    )
    p.add_argument("--out", type=Path, default=None, help="JSON results file")
    p.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument(
        "--no-render",
        dest="render",
        action="store_false",
        help="do not rewrite BENCHMARKS.md and the plot",
    )
    p.add_argument("--max-seconds", type=float, default=900.0, help="bound on the whole run")
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy each aibridge run into DIR (its figures include py-spy's cost)",
    )
    p.add_argument("--soak", action="store_true", help="RSS after 10k vs 100k requests")
    p.add_argument("--soak-first", type=int, default=10_000)
    p.add_argument("--soak-total", type=int, default=100_000)
    p.add_argument("--soak-concurrency", type=int, default=32)
    args = p.parse_args(argv)

    kind = args.loadgen
    if kind in ("auto", "wrk") and shutil.which("wrk") is None:
        print(WRK_INSTALL, file=sys.stderr)
        if kind == "wrk":
            return 2
        kind = "python"
    elif kind == "auto":
        kind = "wrk"
    pin = choose_pin(args.pin, args.pin_layout)
    if args.profile is not None:
        if not (BIN / "py-spy").exists():
            print("bench: --profile needs py-spy: pip install -e '.[bench]'", file=sys.stderr)
            return 2
        args.profile.mkdir(parents=True, exist_ok=True)
        args.render = False  # profiled figures are not the ones to publish
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aibridge-bench-") as d:
        tmp = Path(d)
        gen = LoadGen(kind, pin.loadgen, tmp)
        meta = machine(gen, pin, args)
        if args.soak:
            result = {"meta": meta, "soak": run_soak(args, gen, pin, tmp)}
            out = args.out or RESULTS / "soak.json"
        else:
            result = {"meta": meta, **run_suite(args, gen, pin, tmp)}
            result["verdicts"] = report.verdicts(result["rows"])
            out = args.out or RESULTS / "latest.json"
        meta["load_after"] = _loadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"bench: results in {out}")
    if args.render:
        report.write(RESULTS, args.markdown)
        print(f"bench: wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
