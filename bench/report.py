"""Verdicts, the markdown table and the plot, from ``bench/results/*.json``."""

import json
from pathlib import Path
from typing import Any

Row = dict[str, Any]
PLOT = "bench/results/plot.png"
PEERS = ("litellm",)  # bench/peers/<name>.sh writes bench/results/<name>.json


# The cells the targets are judged on: measured in several rounds (``--rounds``).
TARGET_CELLS = frozenset(
    {
        ("chat_json", 16),
        ("chat_sse", 16),
        ("chat_sse_paced", 256),
        ("chat_json", 1),
        ("chat_sse", 1),
        ("failover_json", 16),
    }
)

_MEDIAN_KEYS = (
    "rps",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "cpu_us_per_req",
    "cpu_util",
    "rss_mib",
    "mock_cpu_us_per_req",
    "mock_cpu_util",
)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _rounds(rows: list[Row], scenario: str, target: str, c: int) -> dict[int, Row]:
    return {
        r.get("round", 0): r
        for r in rows
        if r["scenario"] == scenario and r["target"] == target and r["concurrency"] == c
    }


def collapse(rows: list[Row]) -> list[Row]:
    """One row per cell: each figure the median over the cell's rounds."""
    cells: dict[tuple[str, int, str], list[Row]] = {}
    for r in rows:
        cells.setdefault((r["scenario"], r["concurrency"], r["target"]), []).append(r)
    out = []
    for group in cells.values():
        row = dict(group[0])
        row["rounds"] = len(group)
        row["errors"] = sum(r["errors"] for r in group)
        for key in _MEDIAN_KEYS:
            values = [r[key] for r in group if r.get(key) is not None]
            row[key] = median(values) if values else None
        out.append(row)
    return out


def _paired(
    rows: list[Row], scenario: str, c: int, a: str, b: str, key: str
) -> tuple[float, float, list[float]] | None:
    """Medians of ``key`` for targets a and b, and a/b for each round both ran in."""
    ra, rb = _rounds(rows, scenario, a, c), _rounds(rows, scenario, b, c)
    both = [n for n in ra if n in rb and ra[n].get(key) and rb[n].get(key)]
    if not both:
        return None
    ratios = [ra[n][key] / rb[n][key] for n in sorted(both)]
    return median([ra[n][key] for n in both]), median([rb[n][key] for n in both]), ratios


def _ratio_text(ratios: list[float], digits: int = 2) -> str:
    value = f"{median(ratios):.{digits}f}x"
    if len(ratios) == 1:
        return value
    each = ", ".join(f"{r:.{digits}f}" for r in ratios)
    return f"{value} (median of {len(ratios)} rounds: {each})"


def verdicts(rows: list[Row]) -> list[dict[str, Any]]:
    """The issue's targets. A ratio is taken within each round (targets measured back to
    back, so the machine's drift cancels) and the verdict is on the median round."""
    out: list[dict[str, Any]] = []

    def add(name: str, passed: bool | None, measured: str, goal: str) -> None:
        verdict = "n/a" if passed is None else ("PASS" if passed else "MISS")
        out.append({"target": name, "goal": goal, "measured": measured, "verdict": verdict})

    for scenario, label in (("chat_json", "JSON"), ("chat_sse", "SSE")):
        name = f"{label} c=16: CPU per request vs floor"
        pair = _paired(rows, scenario, 16, "aibridge", "floor", "cpu_us_per_req")
        if pair is None:
            add(name, None, "not measured", "<= 1.5x")
            continue
        gw, fl, ratios = pair
        add(
            name,
            median(ratios) <= 1.5,
            f"{gw:.0f} vs {fl:.0f} µs = {_ratio_text(ratios)}",
            "<= 1.5x",
        )

    pair = _paired(rows, "chat_sse_paced", 256, "aibridge", "direct", "rps")
    if pair is not None:
        gw, di, ratios = pair
        add(
            "paced SSE c=256: throughput vs direct",
            median(ratios) >= 0.95,
            f"{gw:.0f} vs {di:.0f} req/s = {_ratio_text(ratios, 3)}",
            ">= 0.95x",
        )
    pair = _paired(rows, "chat_sse_paced", 256, "aibridge", "direct", "p99_ms")
    if pair is not None:
        gw, di, ratios = pair
        add(
            "paced SSE c=256: p99 vs direct",
            median(ratios) <= 1.10,
            f"{gw:.1f} vs {di:.1f} ms = {_ratio_text(ratios, 3)}",
            "<= 1.10x",
        )
    for scenario, label in (("chat_json", "JSON"), ("chat_sse", "SSE")):
        ra, rd = _rounds(rows, scenario, "aibridge", 1), _rounds(rows, scenario, "direct", 1)
        added = [ra[n]["p50_ms"] - rd[n]["p50_ms"] for n in sorted(ra) if n in rd]
        if added:
            gw, di = (
                median([r["p50_ms"] for r in ra.values()]),
                median([r["p50_ms"] for r in rd.values()]),
            )
            add(
                f"{label} c=1: p50 added over direct",
                median(added) < 1.0,
                f"{gw:.2f} - {di:.2f} = {median(added):.2f} ms"
                + (f" (median of {len(added)} rounds)" if len(added) > 1 else ""),
                "< 1 ms",
            )
    # The failover scenario runs after the plain one: compare the medians of both.
    fo = collapse(
        [r for r in rows if r["scenario"] == "failover_json" and r["target"] == "aibridge"]
    )
    plain = collapse(
        [
            r
            for r in rows
            if r["scenario"] == "chat_json" and r["target"] == "aibridge" and r["concurrency"] == 16
        ]
    )
    if fo and plain and fo[0]["cpu_us_per_req"] and plain[0]["cpu_us_per_req"]:
        f, pl = fo[0], plain[0]
        ratio = f["cpu_us_per_req"] / pl["cpu_us_per_req"]
        per_req = median([r["upstream_429_per_req"] for r in rows if "upstream_429_per_req" in r])
        add(
            "failover once (key 0 -> 429), c=16: CPU vs a plain request",
            ratio < 2.0,
            f"{f['cpu_us_per_req']:.0f} vs {pl['cpu_us_per_req']:.0f} µs = {ratio:.2f}x "
            f"({per_req:.2f} upstream 429s per request; medians)",
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
        "| scenario | c | target | rounds | req/s | p50 ms | p99 ms | CPU µs/req "
        "| CPU % of a core | RSS MiB | mock CPU µs/req | mock CPU % | errors |",
        "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in collapse(rows):
        util = None if r["cpu_util"] is None else r["cpu_util"] * 100
        target = f"**{r['target']}**" if r["target"] == "aibridge" else r["target"]
        lines.append(
            f"| {r['scenario']} | {r['concurrency']} | {target} | {r['rounds']} "
            f"| {_num(r['rps'])} "
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
  latency percentiles as JSON), 1 s warm-up, {settle:g} s for the target to finish the
  requests the warm-up abandoned, then a {duration:g} s measured run per cell, loopback
  only. The cells the targets are judged on run in {rounds} rounds (every target once per
  round, back to back); the table shows each figure's median over the rounds, and each
  target ratio is taken within a round, its verdict on the median round. Without wrk the
  harness says how to install it and falls back to `bench/loadgen.py` (aiohttp; smoke runs
  only).
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
            rounds=meta.get("rounds", 1),
            settle=meta.get("settle_s", 0),
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
    plot_ok = plot(collapse(latest["rows"]), markdown.parent / PLOT)
    markdown.write_text(render(latest, soak, plot_ok, peers))
