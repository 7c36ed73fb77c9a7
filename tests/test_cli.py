"""The ``aibridge`` command line, run as a real subprocess (the installed console script)."""

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aibridge.mock_upstream import Behaviour, MockUpstream
from gateway_support import (
    KEYS,
    closed_port,
    complete,
    mock,
    upstream_server,
    upstream_url,
    wait_until,
)

__all__ = ["mock", "upstream_server", "upstream_url"]

AIBRIDGE = str(Path(sys.executable).parent / "aibridge")
K0, K1 = KEYS[:2]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AIBRIDGE, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env if env is not None else clean_env(),
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIBRIDGE_")}
    env.update(extra)
    return env


def test_help() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("serve", "check-config"):
        assert command in result.stdout


# -- check-config -------------------------------------------------------------------------


def provider(**overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": "openai",
        "type": "openai",
        "base_url": "https://api.openai.com/v1",
        "keys": [K0, K1],
    }
    entry.update(overrides)
    return entry


def write(tmp_path: Path, raw: Any) -> Path:
    path = tmp_path / "aibridge.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_check_config_ok(tmp_path: Path) -> None:
    path = write(tmp_path, {"providers": [provider()]})
    result = run("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    assert "openai" in result.stdout
    for key in KEYS:
        assert key not in result.stdout + result.stderr


def test_check_config_expands_env_vars(tmp_path: Path) -> None:
    path = write(tmp_path, {"providers": [provider(keys=["${TEST_AIBRIDGE_KEY}"])]})
    result = run("check-config", str(path), env=clean_env(TEST_AIBRIDGE_KEY=K0))
    assert result.returncode == 0, result.stderr
    assert K0 not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("providers", "field", "words"),
    [
        ([provider(type="azure")], "providers[0].type", "openai"),
        ([provider(), provider(keys=["sk-other-key-9999999999999"])], "provider", "duplicate"),
        ([provider(keys=[])], "providers[0].keys", "at least 1"),
        ([{k: v for k, v in provider().items() if k != "keys"}], "providers[0].keys", "required"),
        ([provider(keys=[K0, K1, K0])], "providers[0].keys", "duplicate key at index 2"),
        ([provider(base_url="ftp://example.com")], "providers[0].base_url", "URL"),
        ([provider(base_url="not a url")], "providers[0].base_url", "URL"),
        ([provider(keys=[K0, "${AIBRIDGE_TEST_UNSET_VAR}"])], "providers[0].keys[1]", "not set"),
        ([provider(name="admin")], "providers[0].name", "reserved"),
    ],
    ids=[
        "unknown-type",
        "duplicate-names",
        "empty-keys",
        "no-keys",
        "duplicate-keys",
        "bad-url-scheme",
        "bad-url",
        "missing-var",
        "reserved-name",
    ],
)
def test_check_config_rejects(
    tmp_path: Path, providers: list[dict[str, Any]], field: str, words: str
) -> None:
    path = write(tmp_path, {"providers": providers})
    result = run("check-config", str(path))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert field in lines[0]
    assert words in lines[0]
    assert "Traceback" not in output
    for key in [*KEYS, "sk-other-key-9999999999999"]:
        assert key not in output


def test_check_config_missing_file(tmp_path: Path) -> None:
    result = run("check-config", str(tmp_path / "missing.yaml"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip()


# -- serve --------------------------------------------------------------------------------


def test_serve_refuses_a_public_host_without_auth(upstream_url: str) -> None:
    env = clean_env(
        AIBRIDGE_OPENAI_KEYS=f"{K0},{K1}", AIBRIDGE_OPENAI_BASE_URL=upstream_url + "/v1"
    )
    result = run("serve", "--host", "0.0.0.0", "--port", str(closed_port()), env=env)
    assert result.returncode != 0
    assert "0.0.0.0" in result.stderr
    assert "auth" in result.stderr
    assert "Traceback" not in result.stderr
    for key in KEYS:
        assert key not in result.stdout + result.stderr


def get_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            status: int = response.status
            return status
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


@pytest.fixture
def served(mock: MockUpstream, upstream_url: str, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    port = closed_port()
    env = clean_env(
        AIBRIDGE_OPENAI_KEYS=f"{K0},{K1}",
        AIBRIDGE_OPENAI_BASE_URL=upstream_url + "/v1",
        AIBRIDGE_DATABASE=f"sqlite:///{tmp_path}/a.db",
    )
    process = subprocess.Popen(
        [AIBRIDGE, "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        ready = wait_until(
            lambda: process.poll() is not None or get_status(url + "/healthz") == 200, 20.0
        )
        assert ready and process.poll() is None, process.communicate(timeout=5)
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def test_serve_from_env_and_graceful_shutdown(
    served: tuple[str, Any], mock: MockUpstream, tmp_path: Path
) -> None:
    url, process = served
    result = complete(url, "openai", stream=False)
    assert result.text == mock.text
    assert mock.requests[-1].key == K0

    # A slow request in flight when SIGTERM arrives still completes.
    mock.set_behaviour(K0, Behaviour("slow", delay=1.0))
    outcome: dict[str, Any] = {}

    def slow_request() -> None:
        try:
            outcome["result"] = complete(url, "openai", stream=False)
        except Exception as err:  # reported by the assertion below
            outcome["error"] = err

    thread = threading.Thread(target=slow_request)
    thread.start()
    assert wait_until(lambda: mock.inflight == 1, 10.0)
    process.send_signal(signal.SIGTERM)
    thread.join(15.0)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].text == mock.text
    returncode = process.wait(timeout=15.0)
    _, stderr = process.communicate(timeout=5)
    assert returncode == 0, stderr
    assert "Traceback" not in stderr
    # The recorder flushed both interceptions before the process exited.
    with sqlite3.connect(tmp_path / "a.db") as db:
        rows = db.execute("SELECT status FROM interceptions").fetchall()
    assert sorted(rows) == [(200,), (200,)]


def test_repeated_sigterm_still_exits_cleanly(
    served: tuple[str, Any], mock: MockUpstream, tmp_path: Path
) -> None:
    url, process = served
    assert complete(url, "openai", stream=True).text == mock.text
    # An impatient supervisor: SIGTERM again and again until the process is gone.
    returncode = None
    for _ in range(2000):
        process.send_signal(signal.SIGTERM)
        try:
            returncode = process.wait(timeout=0.005)
            break
        except subprocess.TimeoutExpired:
            continue
    assert returncode == 0, process.communicate(timeout=5)[1]
    with sqlite3.connect(tmp_path / "a.db") as db:
        assert db.execute("SELECT count(*) FROM interceptions").fetchone() == (1,)
