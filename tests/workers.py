"""Real processes for resilience tests: `celery -A workers worker` and `celery -A workers beat`,
started, killed and stopped by the test, each writing its log to a file of the test's folder.

Also: who is at the other end of a TCP connection (so the test's SMTP server can SIGKILL the
worker that is talking to it), the local Redis stopped and started again, and a poll helper.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import redis

ROOT = Path(__file__).resolve().parent.parent
REDIS_PORT = 6379
REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1",
    "--port", str(REDIS_PORT), "--save", "", "--appendonly", "no",
    "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip

PR_SET_PDEATHSIG = 1  # linux/prctl.h

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T], *, timeout: float, interval: float = 0.2) -> T:
    """Poll `check` until it returns something true; its value, or AssertionError naming
    `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what} (last: {value!r})")
        time.sleep(interval)


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the test process dies, even without its finally
    blocks (a timeout's SIGKILL), so no worker outlives its test to eat another's tasks."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Proc:
    """One celery process with its log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        self._out = log.open("w")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers", *args],
            env=env, cwd=ROOT, stdout=self._out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.popen.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_ready(self, marker: str, timeout: float = 30) -> None:
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"{self.name} exited {self.popen.returncode}:\n{self.text()}")
            return marker in self.text()

        wait_for(f"{self.name} ready", ready, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL, as the kernel's OOM killer or a pulled plug would."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self) -> None:
        """SIGTERM (a warm shutdown: the current task finishes), then SIGKILL if it lingers."""
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._out.close()


class Cluster:
    """The worker and beat processes of one test; `stop_all` ends every one it started."""

    def __init__(self, env: dict[str, str], folder: Path) -> None:
        self.env, self.folder = env, folder
        self.procs: list[Proc] = []
        folder.mkdir(parents=True, exist_ok=True)

    def worker(self, name: str, *, wait: bool = True) -> Proc:
        """A worker with one task at a time (the solo pool: the process that speaks SMTP is the
        one the test can kill)."""
        proc = Proc(
            name,
            ["worker", "--pool", "solo", "--loglevel", "INFO", "-n", f"{name}@%h",
             "--without-mingle", "--without-gossip", "--without-heartbeat"],
            self.env, self.folder / f"{name}.log",
        )  # fmt: skip
        self.procs.append(proc)
        if wait:
            proc.wait_ready(" ready.")
        return proc

    def beat(self) -> Proc:
        proc = Proc(
            "beat",
            ["beat", "--loglevel", "INFO", "-s", str(self.folder / "beat-schedule"),
             "--max-interval", "1"],
            self.env, self.folder / "beat.log",
        )  # fmt: skip
        self.procs.append(proc)
        proc.wait_ready("beat: Starting")
        return proc

    def start(self, workers: int = 1) -> list[Proc]:
        """`workers` workers (w1, w2, ...) and beat, all ready: they start side by side."""
        started = [self.worker(f"w{n}", wait=False) for n in range(1, workers + 1)]
        self.beat()
        for proc in started:
            proc.wait_ready(" ready.")
        return started

    def workers(self) -> list[Proc]:
        return [p for p in self.procs if p.name != "beat"]

    def pids(self) -> set[int]:
        return {p.pid for p in self.procs if p.alive()}

    def stop_all(self) -> None:
        """At the end of a test: all at once, workers by SIGQUIT (Celery's cold shutdown: the
        test is over, nothing needs finishing), beat by SIGTERM; SIGKILL for what lingers."""
        for proc in self.procs:
            if proc.alive():
                proc.popen.send_signal(signal.SIGTERM if proc.name == "beat" else signal.SIGQUIT)
        for proc in self.procs:
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"===== {p.name} =====\n{p.text()[-6000:]}" for p in self.procs)


@contextmanager
def cluster(env: dict[str, str], folder: Path) -> Iterator[Cluster]:
    """Processes that are ended whatever happens; their logs printed (pytest shows them when
    the test fails)."""
    group = Cluster(env, folder)
    try:
        yield group
    finally:
        group.stop_all()
        print(group.logs())  # pytest shows it when the test failed


def pid_of_peer(peer: tuple[str, int], candidates: set[int]) -> int | None:
    """Which of `candidates` owns the 127.0.0.1 TCP socket whose local port is `peer`'s (the
    client end of a connection to a server in this process): by its inode in /proc."""
    port = f"{peer[1]:04X}"
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if fields[1].rsplit(":", 1)[1] == port:
                    inodes.add(fields[9])
    for pid in candidates:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if any(m and m.group(1) in inodes for m in map(_SOCKET.match, links)):
            return pid
    return None


_SOCKET = re.compile(r"socket:\[(\d+)\]")


def redis_alive(url: str = f"redis://127.0.0.1:{REDIS_PORT}/0") -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def redis_stop() -> None:
    """Stop the local Redis without saving: whatever it held (the broker's queue) is lost."""
    subprocess.run(
        ["redis-cli", "-p", str(REDIS_PORT), "shutdown", "nosave"],
        capture_output=True, timeout=10, check=False,
    )  # fmt: skip
    wait_for("redis stopped", lambda: not redis_alive(), timeout=10)


def redis_start() -> None:
    """Start the local Redis again (as CI runs it), unless it is already up."""
    if redis_alive():
        return
    subprocess.run(REDIS_START, capture_output=True, timeout=10, check=True)
    wait_for("redis started", redis_alive, timeout=10)
