"""``aibridge demo``: key failover, exhaustion and recovery, shown in the terminal.

Starts the mock upstream and the gateway on loopback with a pool of three keys —
one rate-limited, one revoked, one healthy — sends requests through the official
SDKs, and prints what each request did and each key's state.
"""

import tempfile
import time
from pathlib import Path
from typing import Any

import anthropic
import openai
from rich.console import Console
from rich.table import Table

from aibridge.app import Gateway
from aibridge.config import from_mapping
from aibridge.keypool import KeyState
from aibridge.mock_upstream import Behaviour, MockUpstream
from aibridge.recorder import open_recorder
from aibridge.recorder.report import usage_report
from aibridge.server_thread import ServerThread

RATE_LIMITED = "sk-demo-rate-limited-key-0001"
REVOKED = "sk-demo-revoked-key-000000002"
HEALTHY = "sk-demo-healthy-key-000000003"
COOLDOWN = 2  # seconds the rate-limited key is told to wait

_STATE_STYLE = {
    KeyState.VALID: "green",
    KeyState.TEMPORARY: "yellow",
    KeyState.PERMANENT: "red",
}


LABELS = {RATE_LIMITED: "rate-limited", REVOKED: "revoked", HEALTHY: "healthy"}


def _request_table(title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("#", "call", "status", "keys tried", "attempts", "result"):
        table.add_column(column)
    return table


def _key_table(gateway: Gateway) -> Table:
    table = Table(title="key pool", title_justify="left", expand=False)
    for column in ("provider", "key", "hint", "state", "reason", "cooldown", "served"):
        table.add_column(column)
    for rt in gateway.providers.values():
        for key in rt.pool.keys:
            state = key.state()
            table.add_row(
                rt.name,
                LABELS[key.value],
                key.hint,
                f"[{_STATE_STYLE[state]}]{state.value}[/]",
                key.reason or "",
                f"{key.cooldown_remaining():.1f}s" if state is KeyState.TEMPORARY else "",
                str(key.served),
            )
    return table


def run_demo(console: Console | None = None) -> int:
    console = console or Console()
    mock = MockUpstream(
        {
            RATE_LIMITED: Behaviour("rate_limit", retry_after=COOLDOWN),
            REVOKED: Behaviour("unauthorized"),
        }
    )
    keys = [RATE_LIMITED, REVOKED, HEALTHY]
    with tempfile.TemporaryDirectory() as tmp, ServerThread(mock) as upstream:
        database = f"sqlite:///{Path(tmp) / 'demo.db'}"
        config = from_mapping(
            {
                "providers": [
                    {
                        "name": "openai",
                        "type": "openai",
                        "base_url": upstream.url + "/v1",
                        "keys": keys,
                    },
                    {
                        "name": "anthropic",
                        "type": "anthropic",
                        "base_url": upstream.url,
                        "keys": keys,
                    },
                ],
                "database": database,
                "log_requests": False,
            }
        )
        recorder = open_recorder(database, spool_path=Path(tmp) / "spool.jsonl")
        gateway = Gateway(config, recorder=recorder)
        with ServerThread(gateway, ws="none", lifespan="on") as gw:
            console.rule("[bold]aibridge demo")
            console.print(f"mock upstream  {upstream.url}   (scripted: one key 429, one key 401)")
            console.print(f"gateway        {gw.url}   (3 keys per provider, in this order)")
            console.print(_key_table(gateway))
            oa = openai.OpenAI(base_url=f"{gw.url}/openai/v1", api_key="unused", max_retries=0)
            an = anthropic.Anthropic(
                base_url=f"{gw.url}/anthropic", api_key="unused", max_retries=0
            )
            log = _request_table("requests")

            def chat() -> tuple[int, dict[str, str], str]:
                try:
                    raw = oa.chat.completions.with_raw_response.create(
                        model="gpt-demo", messages=[{"role": "user", "content": "hello"}]
                    )
                except openai.RateLimitError as err:
                    retry = err.response.headers.get("retry-after")
                    return 429, dict(err.response.headers), f"retry-after: {retry}s"
                usage = raw.parse().usage
                tokens = (
                    f"{usage.prompt_tokens} in / {usage.completion_tokens} out" if usage else ""
                )
                return raw.status_code, dict(raw.headers), tokens

            def stream() -> tuple[int, dict[str, str], str]:
                with an.messages.with_streaming_response.create(
                    model="claude-demo",
                    max_tokens=64,
                    messages=[{"role": "user", "content": "hi"}],
                    stream=True,
                ) as response:
                    events = sum(1 for line in response.iter_lines() if line.startswith("event:"))
                    return response.status_code, dict(response.headers), f"{events} SSE events"

            def run(table: Table, n: int, call: str, send: Any) -> None:
                before = len(mock.requests)
                status, headers, detail = send()
                tried = " > ".join(LABELS.get(r.key or "", "?") for r in mock.requests[before:])
                style = "green" if status == 200 else "yellow"
                table.add_row(
                    str(n),
                    call,
                    f"[{style}]{status}[/]",
                    tried or "(none: all cooling)",
                    headers.get("x-aibridge-attempts", ""),
                    detail,
                )

            run(log, 1, "openai chat", chat)
            run(log, 2, "openai chat", chat)
            run(log, 3, "anthropic stream", stream)
            mock.set_behaviour(HEALTHY, Behaviour("rate_limit", retry_after=COOLDOWN + 1))
            run(log, 4, "openai chat", chat)
            console.print(log)
            console.print(
                "1: fails over from the rate-limited and the revoked key to the healthy one.\n"
                "2: the bad keys are cooling down, so the walk goes straight to the healthy one.\n"
                "4: the healthy key is now rate-limited too: the client gets a 429 in the\n"
                "   provider's own shape, with a Retry-After saying when the FIRST key recovers."
            )
            console.print(_key_table(gateway))
            mock.set_behaviour(RATE_LIMITED, None)
            mock.set_behaviour(HEALTHY, None)
            wait_until = time.monotonic() + COOLDOWN + 0.2
            with console.status(f"waiting {COOLDOWN}s for the first key to cool down..."):
                while time.monotonic() < wait_until:
                    time.sleep(0.05)
            log = _request_table("after the cooldown: no timers, the key is simply valid again")
            run(log, 5, "openai chat", chat)
            console.print(log)
            console.print(_key_table(gateway))
        recorder.close()
        rows = usage_report(database, None, "key")
        usage = Table(title="recorded usage (aibridge usage --by key)", title_justify="left")
        if rows:
            for column in rows[0]:
                usage.add_column(str(column))
            for row in rows:
                usage.add_row(*(str(v) for v in row.values()))
        console.print(usage)
    console.rule("done")
    return 0
