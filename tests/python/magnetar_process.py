"""A `magnetar standalone` process run by the Python tests.

Each `MagnetarProcess` owns one data directory and one pair of ports for its whole life, so a
test can SIGKILL it and start it again on the same state. Its output goes to one log file per
incarnation, which the tests attach to a failure report.

The binary comes from $MAGNETAR_BIN (deploy/test.sh sets it); without it we fall back to the
dev build under $CARGO_TARGET_DIR or <repo>/target.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pulsar
import pytest

REPO = Path(__file__).resolve().parents[2]

# How long a starting broker may take to accept connections (debug build, RocksDB open,
# ledger recovery after a kill -9).
STARTUP_TIMEOUT_S = 60.0
# How long a SIGTERM'd broker may take to drain and exit before we call it stuck.
SHUTDOWN_TIMEOUT_S = 30.0
# Lines of each log attached to a failed test's report.
LOG_TAIL_LINES = 400

_PR_SET_PDEATHSIG = 1


def magnetar_bin() -> Path:
    explicit = os.environ.get("MAGNETAR_BIN")
    if explicit:
        path = Path(explicit)
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
        if not target.is_absolute():
            target = REPO / target
        path = target / "debug" / "magnetar"
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"magnetar binary not found at {path}: build it with `cargo build --bins` "
            "or set MAGNETAR_BIN",
            pytrace=False,
        )
    return path


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out on 127.0.0.1. All sockets stay open until every port
    is chosen, so the ports are distinct."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def _die_with_parent() -> None:
    """Runs in the child before exec: if pytest dies, the kernel kills the broker too, so an
    aborted run leaves no process holding ports or CI's output pipe."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:  # noqa: BLE001 - best effort, only matters when pytest itself crashes
        pass


class MagnetarProcess:
    """One `magnetar standalone` node: a data dir and ports that survive restarts."""

    def __init__(self, binary: Path, workdir: Path, name: str, extra_args: list[str] | None = None) -> None:
        self.binary = binary
        self.extra_args = list(extra_args or [])
        # Extra environment for the next start (crash points of the crash tests).
        self.env: dict[str, str] = {}
        self.workdir = workdir
        self.name = name
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pulsar_port, self.http_port = free_ports(2)
        self.logs: list[Path] = []
        self.process: subprocess.Popen | None = None

    @property
    def service_url(self) -> str:
        return f"pulsar://127.0.0.1:{self.pulsar_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def command(self) -> list[str]:
        return [
            str(self.binary),
            "standalone",
            "--data-dir", str(self.data_dir),
            "--pulsar-port", str(self.pulsar_port),
            "--http-port", str(self.http_port),
            "--bind-address", "127.0.0.1",
            "--advertised-address", "127.0.0.1",
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        log_path = self.workdir / f"{self.name}.{len(self.logs) + 1}.log"
        self.logs.append(log_path)
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        env.update(self.env)
        with open(log_path, "wb") as log:
            log.write(f"$ {' '.join(self.command())}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent,
            )
        self.wait_ready()

    def wait_ready(self) -> None:
        """Bounded poll until the Pulsar port accepts a TCP connection."""
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            code = self.process.poll()
            if code is not None:
                pytest.fail(
                    f"{self.name} exited with code {code} during startup; log:\n{self.log_tail()}",
                    pytrace=False,
                )
            try:
                with socket.create_connection(("127.0.0.1", self.pulsar_port), timeout=1):
                    return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                pytest.fail(
                    f"{self.name} did not accept connections on port {self.pulsar_port} "
                    f"within {STARTUP_TIMEOUT_S:.0f}s; log:\n{self.log_tail()}",
                    pytrace=False,
                )
            time.sleep(0.1)

    def kill9(self) -> None:
        """Crash: SIGKILL, no chance to flush anything that is not already durable."""
        assert self.process is not None and self.process.poll() is None, f"{self.name} is not running"
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=SHUTDOWN_TIMEOUT_S)

    def stop(self) -> int | None:
        """Graceful shutdown with SIGTERM; returns the exit code. A broker that does not exit
        in time is killed and reported as a test error."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"{self.name} did not exit within {SHUTDOWN_TIMEOUT_S:.0f}s of SIGTERM; log:\n"
                + self.log_tail()
            ) from None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        parts = []
        for path in self.logs:
            try:
                text = path.read_text(errors="replace").splitlines()
            except OSError as error:
                text = [f"<cannot read {path}: {error}>"]
            omitted = max(0, len(text) - lines)
            header = f"----- {path.name}" + (f" (last {lines} of {len(text)} lines)" if omitted else "")
            parts.append("\n".join([header, *text[omitted:]]))
        return "\n".join(parts)


def make_client(node: MagnetarProcess) -> pulsar.Client:
    return pulsar.Client(
        node.service_url,
        operation_timeout_seconds=15,
        connection_timeout_ms=5000,
        # The C++ client logs every connection at INFO; warnings and errors are enough, and
        # pytest shows them with a failed test's captured output.
        logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn),
    )
