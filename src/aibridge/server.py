"""Running the gateway under uvicorn: loopback checks, graceful shutdown."""

import contextlib
import ipaddress
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from aibridge.app import Gateway
from aibridge.config import Config
from aibridge.listener import LOOP_FACTORY
from aibridge.logs import flush_logs
from aibridge.recorder import open_recorder


class InsecureBindError(ValueError):
    pass


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(config: Config, host: str, insecure_no_auth: bool) -> None:
    if config.auth is None and not is_loopback(host) and not insecure_no_auth:
        raise InsecureBindError(
            f"refusing to serve on {host} without gateway auth: add an auth block to the "
            "config, bind to 127.0.0.1, or pass --insecure-no-auth"
        )


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT once its graceful shutdown is done, which kills
    the process (exit -15) before ``serve`` can flush the recorder. The shutdown is
    complete by then: forget the signal and return normally (exit 0)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        stopped_by_signal = False
        with super().capture_signals():
            try:
                yield
            finally:
                captured = getattr(self, "_captured_signals", None)
                if isinstance(captured, list):
                    stopped_by_signal = bool(captured)
                    captured.clear()
        if stopped_by_signal and threading.current_thread() is threading.main_thread():
            # Already shutting down: a repeated SIGTERM must not kill the final flush.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_gateway(config: Config, config_path: Path | None = None) -> Gateway:
    recorder = open_recorder(config.database, spool_path=config.spool)
    return Gateway(config, recorder=recorder, config_path=config_path)


def uvicorn_config(app: Gateway, host: str, port: int, shutdown_timeout: float) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop=LOOP_FACTORY,  # uvloop, accepting every queued connection per wakeup
        http="httptools",
        ws="none",  # a websocket upgrade reaches the app as HTTP and gets 426
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=max(1, round(shutdown_timeout)),
        timeout_keep_alive=75,
        proxy_headers=False,  # the gateway reads no client address; saves work per request
        backlog=4096,
    )


def serve(
    config: Config,
    host: str,
    port: int,
    config_path: Path | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT; in-flight requests get ``shutdown_timeout`` to finish.

    SIGHUP re-reads ``config_path``. The recorder is flushed before the process exits.
    """
    gateway = build_gateway(config, config_path)
    uv_config = uvicorn_config(gateway, host, port, config.server.shutdown_timeout)
    server = _Server(uv_config)
    try:
        # A socket bound here, not by uvicorn: the loop's batch accept serves only those.
        server.run(sockets=[uv_config.bind_socket()])
    finally:
        gateway.recorder.close()
        flush_logs()
