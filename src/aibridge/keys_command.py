"""``aibridge keys``: a live table of every key's health, read from the admin API."""

import json
import os
import time
import urllib.error
import urllib.request
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

_STYLE = {"valid": "green", "temporary": "yellow", "permanent": "red"}


def fetch_keys(url: str, token: str, timeout: float = 5.0) -> dict[str, Any]:
    request = urllib.request.Request(
        url.rstrip("/") + "/admin/keys", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        document: dict[str, Any] = json.loads(response.read())
    return document


def _ago(epoch: float | None, now: float) -> str:
    if epoch is None:
        return ""
    seconds = max(0.0, now - epoch)
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def keys_table(document: dict[str, Any], fetched_at: float, now: float) -> Table:
    """The table; cooldowns count down from when the document was fetched."""
    table = Table(title="aibridge keys", title_justify="left")
    for column in (
        "provider",
        "fingerprint",
        "hint",
        "state",
        "reason",
        "cooldown",
        "failures",
        "last status",
        "served",
        "last used",
    ):
        table.add_column(column)
    elapsed = now - fetched_at
    for provider in document.get("providers", []):
        for key in provider.get("keys", []):
            state = key["state"]
            remaining = max(0.0, float(key.get("cooldown_remaining") or 0.0) - elapsed)
            if state == "temporary" and remaining <= 0:
                state = "valid"  # recovered since the fetch: state is lazy on the server too
            table.add_row(
                provider["name"],
                key["fingerprint"],
                key["hint"],
                f"[{_STYLE.get(state, 'white')}]{state}[/]",
                (key.get("reason") or "") if state != "valid" else "",
                f"{remaining:.0f}s" if state == "temporary" else "",
                str(key.get("consecutive_failures", 0)),
                str(key.get("last_status") or ""),
                str(key.get("served", 0)),
                _ago(key.get("last_used"), time.time()),
            )
    return table


def keys_command(
    url: Annotated[str, typer.Option(help="The gateway's base URL.")] = "http://127.0.0.1:8080",
    token: Annotated[
        str | None, typer.Option(help="Admin token (default: $AIBRIDGE_ADMIN_TOKEN).")
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh live until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.", min=0.1)] = 2.0,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show every key's state, reason and cooldown countdown."""
    token = token or os.environ.get("AIBRIDGE_ADMIN_TOKEN")
    if not token:
        typer.echo("aibridge: an admin token is needed (--token or AIBRIDGE_ADMIN_TOKEN)", err=True)
        raise typer.Exit(2)

    def fetch() -> dict[str, Any]:
        try:
            return fetch_keys(url, token)
        except urllib.error.HTTPError as err:
            typer.echo(f"aibridge: {url} answered {err.code}", err=True)
            raise typer.Exit(1) from None
        except (urllib.error.URLError, OSError) as err:
            typer.echo(f"aibridge: cannot reach {url}: {err}", err=True)
            raise typer.Exit(1) from None

    if json_output:
        typer.echo(json.dumps(fetch(), indent=2))
        return
    console = Console()
    document, fetched = fetch(), time.monotonic()
    if not watch:
        console.print(keys_table(document, fetched, fetched))
        return
    with Live(keys_table(document, fetched, fetched), console=console, auto_refresh=False) as live:
        try:
            while True:
                now = time.monotonic()
                if now - fetched >= interval:
                    document, fetched = fetch(), now
                live.update(keys_table(document, fetched, now), refresh=True)
                time.sleep(min(1.0, interval))
        except KeyboardInterrupt:
            pass
