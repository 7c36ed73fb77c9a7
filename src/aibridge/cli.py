"""The ``aibridge`` command line."""

import typer

app = typer.Typer(
    help="aibridge: an AI gateway with key pools, failover and honest errors.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def version() -> None:
    """Print aibridge's version."""
    from aibridge import __version__

    typer.echo(__version__)
