"""Processes under test: start, wait, stop; CPU and RSS of a process tree from /proc."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    children = _children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime (all threads) of ``pid`` and its live descendants, in seconds."""
    ticks = 0
    for p in tree_pids(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLK_TCK


def rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` and its live descendants, in MiB."""
    kib = 0
    for p in tree_pids(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kib += int(line.split()[1])
        except OSError:
            continue
    return kib / 1024


def pinned(argv: Sequence[str], cpus: str | None) -> list[str]:
    """``argv`` under ``taskset -c cpus`` (when asked and available)."""
    if cpus and shutil.which("taskset"):
        return ["taskset", "-c", cpus, *argv]
    return list(argv)


@dataclass
class Proc:
    name: str
    popen: "subprocess.Popen[bytes]"
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> float:
        return rss_mib(self.pid)

    def stop(self) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


def start(
    name: str,
    argv: Sequence[str],
    port: int,
    logdir: Path,
    cpus: str | None = None,
    stdout: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 20.0,
) -> Proc:
    """Start ``argv`` (its stdout to ``stdout`` or its log) and wait until ``port`` accepts."""
    log = logdir / f"{name}.log"
    err: IO[bytes] = log.open("wb")
    out: IO[bytes] = stdout.open("wb") if stdout is not None else err
    popen = subprocess.Popen(
        pinned(argv, cpus),
        stdout=out,
        stderr=err,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    proc = Proc(name, popen, port, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{name} exited with {popen.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return proc
        time.sleep(0.05)
    proc.stop()
    raise RuntimeError(f"{name} did not listen on {port} within {timeout} s")
