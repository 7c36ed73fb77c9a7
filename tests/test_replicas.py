"""Key health across replicas: two real ``aibridge serve`` processes sharing one real Redis.

Needs a Redis at ``AIBRIDGE_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``);
skips without one, fails without one when ``CI=true``. Each test gives its
replicas their own ``state_namespace`` and deletes it afterwards. The real
Redis is never stopped: an outage is a loopback TCP proxy in front of it, cut.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
import yaml

from aibridge.keypool import fingerprint, mask_key
from aibridge.mock_upstream import Behaviour, MockUpstream
from gateway_support import (
    ADMIN_TOKEN,
    KEYS,
    RawResponse,
    bridged_body,
    client_headers,
    closed_port,
    mock,
    raw_request,
    upstream_server,
    upstream_url,
    wait_until,
)

__all__ = ["mock", "upstream_server", "upstream_url"]

REDIS_URL = os.environ.get("AIBRIDGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
AIBRIDGE = str(Path(sys.executable).parent / "aibridge")
K0, K1, K2 = KEYS[:3]
CHAT = "/openai/v1/chat/completions"
# Every secret of these tests: none may reach Redis in any form.
SECRETS = (*KEYS, *(mask_key(k) for k in KEYS), ADMIN_TOKEN)


# -- Redis ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url() -> str:
    try:
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5) as r:
            r.ping()
    except redis.RedisError as exc:
        reason = f"no Redis answers at {REDIS_URL} ({exc}); set AIBRIDGE_TEST_REDIS_URL"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return REDIS_URL


@pytest.fixture
def ns(redis_url: str) -> Iterator[str]:
    """A namespace of this test's own (config ``state_namespace``), deleted afterwards."""
    namespace = f"aibridge-replicas-{uuid.uuid4().hex[:12]}"
    yield namespace
    with redis.Redis.from_url(redis_url) as r:
        names = list(r.scan_iter(match=f"{namespace}:*"))
        if names:
            r.delete(*names)


def dump_db(url: str) -> dict[bytes, bytes]:
    """Every key of the DB with its value, whatever its type, as bytes (SCAN + TYPE + read)."""
    out: dict[bytes, bytes] = {}
    with redis.Redis.from_url(url) as r:
        for name in r.scan_iter(count=500):
            kind = r.type(name)
            value: Any
            if kind == b"hash":
                value = r.hgetall(name)
            elif kind == b"string":
                value = r.get(name)
            elif kind == b"list":
                value = r.lrange(name, 0, -1)
            elif kind == b"set":
                value = sorted(r.smembers(name))
            elif kind == b"zset":
                value = r.zrange(name, 0, -1, withscores=True)
            elif kind == b"stream":
                value = r.xrange(name)
            else:  # expired between SCAN and TYPE
                continue
            out[name] = repr(value).encode()
    return out


# -- a cuttable TCP proxy in front of Redis -------------------------------------------------


class TcpProxy:
    """A loopback relay (threads) that a test can cut and restore.

    Cutting shuts every relayed connection down at once; while cut, a new
    connection is accepted and closed at once (``refused`` counts them), so a
    client sees a dead Redis without the port going to anyone else.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._cut = False
        self._closed = False
        self.refused = 0
        self._spawn(self._accept_loop)

    def url(self, redis_url: str) -> str:
        parts = urlsplit(redis_url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        return urlunsplit(parts._replace(netloc=f"{userinfo}{at}127.0.0.1:{self.port}"))

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self._cut or self._closed:
                    self.refused += 1
                    client.close()
                    continue
            try:
                server = socket.create_connection(self._target, timeout=2.0)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, server}
            self._spawn(self._pump, client, server)
            self._spawn(self._pump, server, client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(src, dst)

    def _drop(self, *socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the other pump's recv
            sock.close()
            with self._lock:
                self._open.discard(sock)

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            victims = list(self._open)
        self._drop(*victims)

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        self._listener.close()
        for thread in self._threads:
            thread.join(5.0)


# -- gateway processes --------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AIBRIDGE_")}


class GatewayProcess:
    """``aibridge serve --config F`` as a subprocess on a free loopback port."""

    def __init__(self, config: dict[str, Any], workdir: Path, name: str) -> None:
        self.name = name
        self.port = closed_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.stdout_path = workdir / f"{name}.out"
        self.stderr_path = workdir / f"{name}.err"
        self._terminated = False
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [AIBRIDGE, "serve", "--config", str(self.config_path), "--port", str(self.port)],
                cwd=workdir,
                env=clean_env(),
                stdout=out,
                stderr=err,
            )

    def wait_ready(self) -> None:
        ready = wait_until(lambda: self.process.poll() is not None or self._healthy(), 20.0)
        if not ready or self.process.poll() is not None:
            self.stop()
            raise AssertionError(f"gateway {self.name} did not start: {self.output()}")

    def _healthy(self) -> bool:
        try:
            return raw_request(self.url, "GET", "/healthz", timeout=1.0).status == 200
        except OSError:
            return False

    def output(self) -> str:
        return self.stdout_path.read_text() + self.stderr_path.read_text()

    def chat(self) -> RawResponse:
        return raw_request(self.url, "POST", CHAT, bridged_body("openai"), client_headers("openai"))

    def keys(self) -> dict[str, dict[str, Any]]:
        """The admin API's view of the openai pool, by fingerprint."""
        response = raw_request(
            self.url, "GET", "/admin/keys", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert response.status == 200, response.body
        (provider,) = response.json()["providers"]
        return {k["fingerprint"]: k for k in provider["keys"]}

    def state_of(self, key: str) -> str:
        state: str = self.keys()[fingerprint(key)]["state"]
        return state

    def terminate(self) -> None:
        """SIGTERM, once: a second one could land after uvicorn restored the default handler."""
        if not self._terminated and self.process.poll() is None:
            self._terminated = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        self.terminate()
        if self.process.poll() is None:
            try:
                self.process.wait(15.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5.0)
        return self.process.returncode


Spawn = Callable[..., list[GatewayProcess]]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """``spawn(config, "a", "b")``: one process per name, started side by side, all ready."""
    started: list[GatewayProcess] = []

    def start(config: dict[str, Any], *names: str) -> list[GatewayProcess]:
        gateways = [GatewayProcess(config, tmp_path, name) for name in names]
        started.extend(gateways)
        for gateway in gateways:
            gateway.wait_ready()
        return gateways

    yield start
    for gateway in started:
        gateway.stop()
        assert "Traceback" not in gateway.output(), gateway.output()


def replica_config(
    upstream_url: str, state: str, namespace: str, keys: tuple[str, ...] = (K0, K1)
) -> dict[str, Any]:
    return {
        "providers": [
            {
                "name": "openai",
                "type": "openai",
                "base_url": upstream_url + "/v1",
                "keys": list(keys),
            }
        ],
        "state": state,
        "state_namespace": namespace,
        "admin": {"token": ADMIN_TOKEN},
        "log_requests": False,
    }


def keys_seen_since(mock: MockUpstream, mark: int) -> list[str | None]:
    return [r.key for r in mock.requests[mark:]]


# -- tests --------------------------------------------------------------------------------


def test_a_429_through_replica_a_makes_replica_b_skip_the_key(
    mock: MockUpstream,
    upstream_url: str,
    redis_url: str,
    ns: str,
    spawn: Spawn,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = replica_config(upstream_url, redis_url, ns)
    a, b = spawn(config, "a", "b")
    # Both start healthy; B's first request uses key 0 (primary).
    assert a.state_of(K0) == b.state_of(K0) == "valid"
    mock.set_behaviour(K0, Behaviour("rate_limit", retry_after=30))

    with redis.Redis.from_url(redis_url) as r, r.pubsub() as channel:
        channel.subscribe(f"{ns}:keys")
        assert channel.get_message(timeout=2.0) is not None  # the subscribe confirmation

        sent = time.perf_counter()
        response = a.chat()
        answered = time.perf_counter()
        assert response.status == 200, response.body
        assert response.headers["x-aibridge-attempts"] == "2"
        propagated = wait_until(lambda: b.state_of(K0) == "temporary", 5.0)
        seen = time.perf_counter()
        assert propagated, "replica B never saw key 0 cool down"
        elapsed_ms = (seen - answered) * 1000.0
        with capsys.disabled():
            print(
                f"\n[replicas] 429 on A -> key 0 temporary in B's /admin/keys: "
                f"{elapsed_ms:.1f} ms after A's response "
                f"({(seen - sent) * 1000.0:.1f} ms after A's request was sent)"
            )
        assert elapsed_ms < 1000.0  # the target is < 50 ms on loopback; this is the hard bound

        message = channel.get_message(timeout=2.0)
        assert message is not None and message["type"] == "message"
        for secret in SECRETS:
            assert secret.encode() not in message["data"]

    seen_b = b.keys()[fingerprint(K0)]
    assert seen_b["reason"] == "rate_limited"
    assert 25.0 < seen_b["cooldown_remaining"] <= 30.0

    # B's very next request goes straight to key 1: the mock sees no key 0 from it.
    before = len(mock.requests)
    response = b.chat()
    assert response.status == 200, response.body
    assert response.headers["x-aibridge-attempts"] == "1"
    assert keys_seen_since(mock, before) == [K1]

    # What reached Redis names keys by fingerprint only: no value, no hint, no token.
    entry = f"{ns}:key:openai:{fingerprint(K0)}".encode()
    dump = dump_db(redis_url)
    assert entry in dump, sorted(dump)
    assert b"rate_limited" in dump[entry]
    for name, value in dump.items():
        for secret in SECRETS:
            assert secret.encode() not in name, name
            assert secret.encode() not in value, name


def test_key_state_survives_a_restart_of_every_replica(
    mock: MockUpstream,
    upstream_url: str,
    redis_url: str,
    ns: str,
    spawn: Spawn,
) -> None:
    config = replica_config(upstream_url, redis_url, ns)
    a, b = spawn(config, "a", "b")
    mock.set_behaviour(K0, Behaviour("rate_limit", retry_after=30))
    assert a.chat().status == 200
    assert wait_until(lambda: b.state_of(K0) == "temporary", 5.0)
    a.terminate()  # both at once: they shut down side by side
    b.terminate()
    assert a.stop() == 0
    assert b.stop() == 0

    (fresh,) = spawn(config, "c")
    # Loaded during startup: cooling from the first moment the fresh replica serves.
    view = fresh.keys()[fingerprint(K0)]
    assert view["state"] == "temporary", view
    assert view["reason"] == "rate_limited"
    assert 20.0 < view["cooldown_remaining"] <= 30.0
    assert fresh.state_of(K1) == "valid"
    before = len(mock.requests)
    response = fresh.chat()
    assert response.status == 200
    assert response.headers["x-aibridge-attempts"] == "1"
    assert keys_seen_since(mock, before) == [K1]


def test_an_operators_disable_and_enable_on_one_replica_reach_the_other(
    mock: MockUpstream, upstream_url: str, redis_url: str, ns: str, spawn: Spawn
) -> None:
    a, b = spawn(replica_config(upstream_url, redis_url, ns), "a", "b")
    fp = fingerprint(K0)

    def admin(replica: GatewayProcess, action: str) -> dict[str, Any]:
        response = raw_request(
            replica.url,
            "POST",
            f"/admin/keys/openai/{fp}/{action}",
            headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert response.status == 200, response.body
        result: dict[str, Any] = response.json()
        return result

    assert admin(a, "disable")["state"] == "permanent"
    assert wait_until(lambda: b.state_of(K0) == "permanent", 5.0)
    assert b.keys()[fp]["reason"] == "disabled"
    before = len(mock.requests)
    response = b.chat()
    assert response.headers["x-aibridge-attempts"] == "1"
    assert keys_seen_since(mock, before) == [K1]

    # Lifted on B: A uses key 0 again.
    assert admin(b, "enable")["state"] == "valid"
    assert wait_until(lambda: a.state_of(K0) == "valid", 5.0)
    before = len(mock.requests)
    assert a.chat().status == 200
    assert keys_seen_since(mock, before) == [K0]


def test_replicas_keep_serving_through_a_redis_outage_and_resync(
    mock: MockUpstream,
    upstream_url: str,
    redis_url: str,
    ns: str,
    spawn: Spawn,
    capsys: pytest.CaptureFixture[str],
) -> None:
    parts = urlsplit(redis_url)
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 6379))
    try:
        config = replica_config(upstream_url, proxy.url(redis_url), ns, keys=(K0, K1, K2))
        a, b = spawn(config, "a", "b")

        # Through the proxy, sharing works: a 429 on A reaches B.
        mock.set_behaviour(K0, Behaviour("rate_limit", retry_after=60, times=1))
        assert a.chat().status == 200
        assert wait_until(lambda: b.state_of(K0) == "temporary", 5.0)

        def timed_chat(replica: GatewayProcess) -> float:
            started = time.perf_counter()
            response = replica.chat()
            assert response.status == 200, response.body
            return time.perf_counter() - started

        baseline = max(timed_chat(r) for r in (a, b, a, b))

        # Redis goes away: both replicas notice (their reconnects are refused) ...
        proxy.cut()
        assert wait_until(lambda: proxy.refused >= 2, 10.0), "no replica tried to reconnect"
        # ... and keep serving, without waiting on Redis.
        during = [timed_chat(r) for r in (a, b) * 5]
        assert max(during) < baseline + 0.5, (baseline, during)

        # A mark made on A during the outage stays local for now ...
        mock.set_behaviour(K1, Behaviour("rate_limit", retry_after=60, times=1))
        response = a.chat()
        assert response.status == 200
        assert response.headers["x-aibridge-attempts"] == "2"
        assert a.state_of(K1) == "temporary"
        assert b.state_of(K1) == "valid"

        # ... and reaches B once Redis is back.
        proxy.restore()
        restored = time.perf_counter()
        assert wait_until(lambda: b.state_of(K1) == "temporary", 20.0), "B never resynced"
        with capsys.disabled():
            print(
                f"\n[replicas] outage mark reached B {time.perf_counter() - restored:.2f} s "
                "after Redis came back"
            )
        assert b.keys()[fingerprint(K1)]["reason"] == "rate_limited"
        before = len(mock.requests)
        response = b.chat()
        assert response.headers["x-aibridge-attempts"] == "1"
        assert keys_seen_since(mock, before) == [K2]
        # The mark also reached Redis itself (written back on reconnect).
        with redis.Redis.from_url(redis_url) as r:
            assert r.hget(f"{ns}:key:openai:{fingerprint(K1)}", "r") == b"rate_limited"
    finally:
        proxy.close()


def test_state_namespace_is_validated() -> None:
    from aibridge.config import ConfigError, from_mapping

    base = replica_config("http://127.0.0.1:1", "redis://127.0.0.1:6379/15", "ok-ns")
    assert from_mapping(base).state_namespace == "ok-ns"
    del base["state_namespace"]
    assert from_mapping(base).state_namespace == "aibridge"
    with pytest.raises(ConfigError, match="state_namespace"):
        from_mapping({**base, "state_namespace": "has space:*"})
