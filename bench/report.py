"""Verdicts, the markdown table and the plot, from ``bench/results/*.json``."""

import json
from pathlib import Path
from typing import Any

Row = dict[str, Any]
PLOT = "bench/results/plot.png"
PEERS = ("litellm",)  # bench/peers/<name>.sh writes bench/results/<name>.json


def _find(rows: list[Row], scenario: str, target: str, c: int) -> Row | None:
    for r in rows:
        if r["scenario"] == scenario and r["target"] == target and r["concurrency"] == c:
            return r
    return None


def verdicts(rows: list[Row]) -> list[dict[str, Any]]:
    """The issue's targets, each from figures of the same run."""
    out: list[dict[str, Any]] = []

    def add(name: str, passed: bool | None, measured: str, goal: str) -> None:
        verdict = "n/a" if passed is None else ("PASS" if passed else "MISS")
        out.append({"target": name, "goal": goal, "measured": measured, "verdict": verdict})

    for scenario, label in (("chat_json", "JSON"), ("chat_sse", "SSE")):
        gw, fl = _find(rows, scenario, "aibridge", 16), _find(rows, scenario, "floor", 16)
        if gw and fl and gw["cpu_us_per_req"] and fl["cpu_us_per_req"]:
            ratio = gw["cpu_us_per_req"] / fl["cpu_us_per_req"]
            add(
                f"{label} c=16: CPU per request vs floor",
                ratio <= 1.5,
                f"{gw['cpu_us_per_req']:.0f} vs {fl['cpu_us_per_req']:.0f} µs = {ratio:.2f}x",
                "<= 1.5x",
            )
        else:
            add(f"{label} c=16: CPU per request vs floor", None, "not measured", "<= 1.5x")

    gw, di = (
        _find(rows, "chat_sse_paced", "aibridge", 256),
        _find(rows, "chat_sse_paced", "direct", 256),
    )
    if gw and di and di["rps"] and di["p99_ms"]:
        rps, p99 = gw["rps"] / di["rps"], gw["p99_ms"] / di["p99_ms"]
        add(
            "paced SSE c=256: throughput vs direct",
            rps >= 0.95,
            f"{gw['rps']:.0f} vs {di['rps']:.0f} req/s = {rps:.3f}x",
            ">= 0.95x",
        )
        add(
            "paced SSE c=256: p99 vs direct",
            p99 <= 1.10,
            f"{gw['p99_ms']:.1f} vs {di['p99_ms']:.1f} ms = {p99:.3f}x",
            "<= 1.10x",
        )
    for scenario, label in (("chat_json", "JSON"), ("chat_sse", "SSE")):
        gw, di = _find(rows, scenario, "aibridge", 1), _find(rows, scenario, "direct", 1)
        if gw and di:
            added = gw["p50_ms"] - di["p50_ms"]
            add(
                f"{label} c=1: p50 added over direct",
                added < 1.0,
                f"{gw['p50_ms']:.2f} - {di['p50_ms']:.2f} = {added:.2f} ms",
                "< 1 ms",
            )
    fo, plain = (
        _find(rows, "failover_json", "aibridge", 16),
        _find(rows, "chat_json", "aibridge", 16),
    )
    if fo and plain and fo["cpu_us_per_req"] and plain["cpu_us_per_req"]:
        ratio = fo["cpu_us_per_req"] / plain["cpu_us_per_req"]
        add(
            "failover once (key 0 -> 429), c=16: CPU vs a plain request",
            ratio < 2.0,
            f"{fo['cpu_us_per_req']:.0f} vs {plain['cpu_us_per_req']:.0f} µs = {ratio:.2f}x "
            f"({fo['upstream_429_per_req']:.2f} upstream 429s per request)",
            "< 2x",
        )
    return out


def soak_verdict(soak: dict[str, Any]) -> dict[str, Any]:
    first, last = soak["points"][0], soak["points"][-1]
    ok = soak["complete"] and soak["ratio"] <= 1.10
    return {
        "target": f"memory: RSS after {last['requests']:,} vs after {first['requests']:,} requests",
        "goal": "<= +10 %",
        "measured": f"{last['rss_mib']:.1f} vs {first['rss_mib']:.1f} MiB = "
        f"{(soak['ratio'] - 1) * 100:+.1f} %",
        "verdict": "PASS" if ok else "MISS",
    }


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| scenario | c | target | req/s | p50 ms | p99 ms | CPU µs/req | CPU % of a core "
        "| RSS MiB | mock CPU µs/req | mock CPU % | errors |",
        "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        util = None if r["cpu_util"] is None else r["cpu_util"] * 100
        target = f"**{r['target']}**" if r["target"] == "aibridge" else r["target"]
        lines.append(
            f"| {r['scenario']} | {r['concurrency']} | {target} | {_num(r['rps'])} "
            f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {_num(r['cpu_us_per_req'])} "
            f"| {_num(util)} | {_num(r['rss_mib'], 1)} | {_num(r['mock_cpu_us_per_req'])} "
            f"| {r['mock_cpu_util'] * 100:.0f} | {r['errors']} |"
        )
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib missing (pip install -e '.[bench]'): no plot")
        return False
    scenarios = [("chat_json", "OpenAI chat JSON"), ("chat_sse", "OpenAI chat SSE (20 chunks)")]
    targets = sorted(
        {r["target"] for r in rows},
        key=lambda t: ("direct", "floor").index(t) if t in ("direct", "floor") else 2,
    )
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5), dpi=72)
    for i, (scenario, title) in enumerate(scenarios):
        for t in targets:
            pts = sorted(
                (r for r in rows if r["scenario"] == scenario and r["target"] == t),
                key=lambda r: r["concurrency"],
            )
            if not pts:
                continue
            cs = [r["concurrency"] for r in pts]
            (line,) = axes[i][0].plot(cs, [r["rps"] for r in pts], marker="o", label=t)
            axes[i][1].plot(
                cs, [r["p99_ms"] for r in pts], marker="o", color=line.get_color(), label=f"{t} p99"
            )
            axes[i][1].plot(
                cs, [r["p50_ms"] for r in pts], ls="--", color=line.get_color(), label=f"{t} p50"
            )
        axes[i][0].set_title(f"{title}: throughput")
        axes[i][0].set_ylabel("requests/s")
        axes[i][1].set_title(f"{title}: latency")
        axes[i][1].set_ylabel("ms")
        axes[i][1].set_yscale("log")
        for ax in axes[i]:
            ax.set_xscale("log", base=2)
            ax.set_xticks(cs, [str(c) for c in cs])
            ax.set_xlabel("concurrent connections")
            ax.grid(True, alpha=0.3)
        axes[i][0].legend(fontsize=8)
        axes[i][1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


METHOD = """\
How it is measured (`make bench`, i.e. `python -m bench.run`; `make bench-soak` for memory):

- **Upstream**: the project's mock upstream (`aibridge mock-upstream`) as its own process,
  twice: a fast one (answers at once; `bench-fail-0` is scripted `rate_limit` with
  `retry-after: 1e-06`, so aibridge cools it for 1 µs only and tries it again on nearly
  every request) and a paced one (`--chunks 20 --chunk-delay 0.01`: 20 SSE chunks 10 ms
  apart).
- **Targets**, back to back for each scenario and concurrency, against the same mock
  processes: **direct** (the load generator talks to the mock); **floor**
  (`bench/floor_proxy.py`: raw ASGI on uvicorn + uvloop + httptools, one aiohttp session,
  round-robin key, bytes passed through, SSE relayed chunk by chunk — what a Python proxy
  cannot beat); **aibridge** (`aibridge serve --config <generated>`: gateway auth tokens,
  2-key pools with round-robin, usage recorded to SQLite in a temp dir, Prometheus metrics,
  one JSON log line per request written to a file).
- **Load**: `wrk -t1` with `bench/wrk/post.lua` (POST body and headers; `done()` prints the
  latency percentiles as JSON), 1 s warm-up then a {duration:g} s measured run per cell, loopback
  only. Without wrk the harness says how to install it and falls back to `bench/loadgen.py`
  (aiohttp; smoke runs only).
- **Requests**: OpenAI `POST /v1/chat/completions` (`gpt-4o-mini`, one user message; the
  SSE body asks for `stream_options.include_usage` itself, so every target relays the same
  frames) and Anthropic `POST /v1/messages`; through the proxies as `/<provider>/v1/...`.
- **Pinning** (`taskset`): {pinning}. The mock stands in for a remote provider, so it gets
  a core to itself; the proxies share theirs with the client, which makes them look slower,
  never faster, than they are.
- **Noise**: load average {load_before} before the run, {load_after} after (other work on
  the machine shows up here). Absolute req/s and p99 move from run to run; CPU µs/req and
  the same-minute ratios move much less.
- **CPU µs/req**: utime + stime delta of the target's process tree (`/proc/<pid>/stat`, the
  process and its descendants, all threads) over the measured run, divided by completed
  requests. For *direct* the target is the mock itself. The most stable figure here.
  **RSS**: `VmRSS` of the tree after the run. **mock CPU** is shown so it is visible the
  upstream is not the bottleneck (100 % = one full core).
- **Profiling**: `python -m bench.run --profile DIR [--scenario S --concurrency C]` records
  each floor and aibridge run with `py-spy record --nonblocking -f raw` (those figures are
  not published); `python -m bench.profile DIR/*.txt` prints the hot spots.
"""


def render(
    latest: dict[str, Any],
    soak: dict[str, Any] | None,
    plot_ok: bool,
    peers: dict[str, dict[str, Any]] | None = None,
) -> str:
    meta = latest["meta"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    parts = [
        "# Benchmarks",
        "",
        "What the gateway costs, against the floor a Python proxy can reach. Regenerated by "
        "`make bench` (this file and `bench/results/plot.png`; raw figures in "
        "`bench/results/latest.json`, not committed).",
        "",
        f"- **Date**: {meta['date']}",
        f"- **Machine**: {meta['nproc']} CPUs, {meta['cpu_model']}, Linux {meta['kernel']}",
        f"- **Python** {meta['python']}; {versions}",
        f"- **Load generator**: {meta['loadgen']}",
        "",
        METHOD.format(
            duration=meta["duration_s"],
            pinning=meta["pinning"],
            load_before=meta.get("load_before", "?"),
            load_after=meta.get("load_after", "?"),
        ),
        "## Targets",
        "",
        "| target | goal | measured | verdict |",
        "|---|---|---|---|",
    ]
    checks = list(latest.get("verdicts", []))
    if soak is not None:
        checks.append(soak_verdict(soak["soak"]))
    for v in checks:
        parts.append(f"| {v['target']} | {v['goal']} | {v['measured']} | **{v['verdict']}** |")
    if soak is None:
        parts.append(
            "| memory: RSS after 100k vs 10k requests | <= +10 % | not run "
            "(`make bench-soak`) | n/a |"
        )
    findings = Path(__file__).with_name("FINDINGS.md")
    if findings.exists():  # hand-written: what the profiler found, what was fixed, before/after
        parts += ["", findings.read_text().rstrip()]
    parts += ["", "## Results", "", table(latest["rows"]), ""]
    if plot_ok:
        parts += ["![throughput and latency against concurrency](bench/results/plot.png)", ""]
    for name, peer in (peers or {}).items():
        parts += [
            f"## Peer: {name} (opt-in, `bench/peers/{name}.sh`, {peer['meta']['date']})",
            "",
            f"Same mocks, keys and pinning; measured in its own run, next to direct, floor "
            f"and aibridge so the ratios hold. {name}'s access log goes to a file.",
            "",
            table(peer["rows"]),
            "",
        ]
    if soak is not None:
        s = soak["soak"]
        pts = ", ".join(f"{p['rss_mib']:.1f} MiB after {p['requests']:,}" for p in s["points"])
        parts += [
            "## Memory soak",
            "",
            f"`make bench-soak` ({soak['meta']['date']}): aibridge alone, OpenAI chat JSON at "
            f"c={s['concurrency']}; RSS {s['rss_start_mib']:.1f} MiB at start, {pts} requests "
            f"({s['seconds']:.0f} s).",
            "",
        ]
    return "\n".join(parts)


def write(results: Path, markdown: Path) -> None:
    latest_path, soak_path = results / "latest.json", results / "soak.json"
    if not latest_path.exists():
        print(f"bench: no {latest_path}: run `make bench` first; BENCHMARKS.md not written")
        return
    latest = json.loads(latest_path.read_text())
    soak = json.loads(soak_path.read_text()) if soak_path.exists() else None
    peers = {}
    for name in PEERS:
        path = results / f"{name}.json"
        if path.exists():
            peers[name] = json.loads(path.read_text())
    plot_ok = plot(latest["rows"], markdown.parent / PLOT)
    markdown.write_text(render(latest, soak, plot_ok, peers))
