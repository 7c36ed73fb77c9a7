"""usage_report aggregates what the recorder stored; the usage command prints it."""

from pathlib import Path

import orjson
import pytest
import typer
from typer.testing import CliRunner

from aibridge.recorder import TokenUsage, open_recorder
from aibridge.recorder.report import parse_since, usage_command, usage_report
from pg_support import make_interception

NOW = 1_800_000_000.0


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'usage.db'}"
    rec = open_recorder(url, flush_interval=0.02)
    rows = [
        # user, model, key, status, error, usage, age in seconds
        ("alice", "gpt-4o", "sk-a...0001", 200, None, TokenUsage(100, 10, 5, 1), 60),
        ("alice", "gpt-4o", "sk-a...0001", 429, "rate_limited", None, 120),
        ("alice", "claude", "sk-a...0002", 200, None, TokenUsage(7, 3, 0, 2), 3600 * 5),
        ("bob", "claude", None, 200, None, TokenUsage(50, 20, 0, 0), 30),
        ("bob", "claude", "sk-a...0002", 502, "server_error", None, 86400 * 3),
    ]
    for n, (user, model, key, status, err, usage, age) in enumerate(rows):
        rec.record(
            make_interception(
                n,
                user=user,
                model=model,
                key_hint=key,
                status=status,
                error_type=err,
                usage=usage,
                provider="openai" if model.startswith("gpt") else "anthropic",
                started_at=NOW - age,
            )
        )
    rec.close()
    return url


def test_parse_since() -> None:
    assert parse_since("90s") == 90
    assert parse_since("30m") == 1800
    assert parse_since("24h") == 86400
    assert parse_since("7d") == 7 * 86400
    assert parse_since("all") is None
    with pytest.raises(ValueError, match="invalid duration"):
        parse_since("yesterday")


def test_report_by_user_all_time(db: str) -> None:
    assert usage_report(db, None, "user", now=NOW) == [
        {
            "user": "alice",
            "requests": 3,
            "errors": 1,
            "input": 107,
            "output": 13,
            "cache_read": 5,
            "cache_write": 3,
        },
        {
            "user": "bob",
            "requests": 2,
            "errors": 1,
            "input": 50,
            "output": 20,
            "cache_read": 0,
            "cache_write": 0,
        },
    ]


def test_report_windows_and_groupings(db: str) -> None:
    day = usage_report(db, 86400, "model", now=NOW)
    assert {r["model"]: (r["requests"], r["input"]) for r in day} == {
        "gpt-4o": (2, 100),
        "claude": (2, 57),
    }
    hour = usage_report(db, 3600, "provider", now=NOW)
    assert {r["provider"]: r["requests"] for r in hour} == {"openai": 2, "anthropic": 1}
    keys = usage_report(db, None, "key", now=NOW)
    assert {r["key"]: r["requests"] for r in keys} == {
        "sk-a...0001": 2,
        "sk-a...0002": 2,
        "(none)": 1,
    }
    with pytest.raises(ValueError, match="invalid grouping"):
        usage_report(db, None, "color")


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("usage")(usage_command)
    app.command("noop")(lambda: None)  # two commands, so "usage" is a subcommand
    return app


def test_usage_command_json(db: str) -> None:
    result = CliRunner().invoke(
        _app(), ["usage", "--since", "all", "--by", "model", "--json", "--database", db]
    )
    assert result.exit_code == 0, result.output
    rows = orjson.loads(result.stdout)
    assert {r["model"]: r["requests"] for r in rows} == {"claude": 3, "gpt-4o": 2}


def test_usage_command_table_and_env(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIBRIDGE_DATABASE", db)
    monkeypatch.setenv("COLUMNS", "160")
    result = CliRunner().invoke(_app(), ["usage", "--since", "all"])
    assert result.exit_code == 0, result.output
    assert "alice" in result.stdout and "total" in result.stdout


def test_usage_command_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    bad_since = runner.invoke(_app(), ["usage", "--since", "soon"])
    assert bad_since.exit_code == 2
    missing = runner.invoke(
        _app(), ["usage", "--database", f"sqlite:///{tmp_path / 'none.db'}", "--json"]
    )
    assert missing.exit_code == 1
    secret = runner.invoke(_app(), ["usage", "--database", "mysql://u:hunter2@h/db"])
    assert secret.exit_code == 1
    assert "hunter2" not in secret.output


def test_usage_command_reads_the_configs_database_without_its_keys(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--config` takes `database:` with ${VAR} expanded; provider keys need not be set."""
    monkeypatch.delenv("AIBRIDGE_DATABASE", raising=False)
    monkeypatch.delenv("USAGE_TEST_KEY", raising=False)
    monkeypatch.setenv("USAGE_TEST_DB", db)
    config = tmp_path / "aibridge.yaml"
    config.write_text(
        'database: "${USAGE_TEST_DB}"\n'
        "providers:\n"
        '  - {name: openai, type: openai, base_url: "http://x/v1", keys: ["${USAGE_TEST_KEY}"]}\n'
    )
    result = CliRunner().invoke(
        _app(), ["usage", "--since", "all", "--by", "user", "--json", "--config", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert {r["user"] for r in orjson.loads(result.stdout)} == {"alice", "bob"}
    monkeypatch.delenv("USAGE_TEST_DB")
    missing = CliRunner().invoke(_app(), ["usage", "--json", "--config", str(config)])
    assert missing.exit_code == 2
    assert "USAGE_TEST_DB" in missing.output


def test_usage_command_never_quotes_a_broken_config_line(tmp_path: Path) -> None:
    """A YAML error in --config names the line, not its text: the line may hold a key."""
    config = tmp_path / "aibridge.yaml"
    config.write_text("providers:\n  - {keys: [sk-live-SECRET-0123]]}\n")
    result = CliRunner().invoke(_app(), ["usage", "--config", str(config)])
    assert result.exit_code == 2
    assert "invalid YAML at line" in result.output
    assert "SECRET" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
