"""The ``aibridge`` command line."""

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="aibridge: an AI gateway with key pools, failover and honest errors.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file; without it, AIBRIDGE_* env vars."),
]


def _load(config: Path | None) -> "object":
    from aibridge.config import ConfigError, load

    try:
        return load(config)
    except ConfigError as err:
        typer.echo(f"aibridge: invalid config: {err}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8080).")] = None,
    insecure_no_auth: Annotated[
        bool, typer.Option("--insecure-no-auth", help="Allow a non-loopback host without auth.")
    ] = False,
    log_level: Annotated[str, typer.Option(help="debug | info | warning | error")] = "info",
) -> None:
    """Serve the gateway."""
    from aibridge.config import Config
    from aibridge.logs import configure_logging
    from aibridge.server import InsecureBindError, check_bind
    from aibridge.server import serve as run_server

    cfg = _load(config)
    assert isinstance(cfg, Config)
    bind_host = host or cfg.server.host
    bind_port = port if port is not None else cfg.server.port
    try:
        check_bind(cfg, bind_host, insecure_no_auth)
    except InsecureBindError as err:
        typer.echo(f"aibridge: {err}", err=True)
        raise typer.Exit(2) from None
    configure_logging(log_level)
    typer.echo(
        f"aibridge: serving {', '.join(p.name for p in cfg.providers)} "
        f"on http://{bind_host}:{bind_port}",
        err=True,
    )
    run_server(cfg, bind_host, bind_port, config_path=config)


@app.command("check-config")
def check_config(
    file: Annotated[Path, typer.Argument(help="The YAML config to validate.")],
) -> None:
    """Validate a config file without serving."""
    from aibridge.config import Config

    cfg = _load(file)
    assert isinstance(cfg, Config)
    names = ", ".join(f"{p.name} ({p.type}, {len(p.keys)} keys)" for p in cfg.providers)
    typer.echo(f"config ok: {names}")


@app.command()
def demo() -> None:
    """Show failover: a mock upstream, the gateway, 3 keys (rate-limited, revoked, healthy)."""
    from aibridge.demo import run_demo

    raise typer.Exit(run_demo())


@app.command()
def version() -> None:
    """Print aibridge's version."""
    from aibridge import __version__

    typer.echo(__version__)


def _register_optional_commands() -> None:
    from aibridge.keys_command import keys_command
    from aibridge.mock_upstream import mock_upstream_command
    from aibridge.recorder.report import usage_command

    app.command("mock-upstream")(mock_upstream_command)
    app.command("usage")(usage_command)
    app.command("keys")(keys_command)


_register_optional_commands()
