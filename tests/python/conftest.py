"""Fixtures that run a real `magnetar standalone` process for the Python client tests.

Tests that leave the broker healthy share one process per session (`magnetar`, `client`);
tests that kill it get their own (`own_magnetar`). When a test fails, the logs of every
process it used are attached to its report.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pulsar
import pytest

from magnetar_process import MagnetarProcess, magnetar_bin, make_client

# Every process a test used, so a failure report can carry their logs.
_PROCESSES_KEY = pytest.StashKey[list]()


def _track(request: pytest.FixtureRequest, process: MagnetarProcess) -> None:
    request.node.stash.setdefault(_PROCESSES_KEY, []).append(process)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for process in item.stash.get(_PROCESSES_KEY, []):
            report.sections.append((f"{process.name} log ({report.when})", process.log_tail()))


@contextlib.contextmanager
def _running(name: str, settings: Callable[[MagnetarProcess], str] | None = None) -> Iterator[MagnetarProcess]:
    """A started standalone; with `settings`, the broker settings file it gets (`--config`),
    written from the process (its ports) before it starts."""
    binary = magnetar_bin()
    with tempfile.TemporaryDirectory(prefix=f"magnetar-{name}-") as workdir:
        config = Path(workdir) / "broker.toml"
        process = MagnetarProcess(binary, Path(workdir), name, ["--config", str(config)] if settings else None)
        if settings:
            config.write_text(settings(process))
        try:
            process.start()
            yield process
        finally:
            process.stop()


@pytest.fixture(scope="session")
def _shared_magnetar() -> Iterator[MagnetarProcess]:
    with _running("shared") as process:
        yield process


@pytest.fixture
def magnetar(request: pytest.FixtureRequest, _shared_magnetar: MagnetarProcess) -> MagnetarProcess:
    """The session's broker, shared by tests that leave it healthy; each test uses its own
    topics. Fails the test up front if an earlier test crashed the broker."""
    _track(request, _shared_magnetar)
    process = _shared_magnetar.process
    assert process is not None and process.poll() is None, (
        f"the shared magnetar process has exited with code {process and process.returncode}"
    )
    return _shared_magnetar


@pytest.fixture
def own_magnetar(request: pytest.FixtureRequest) -> Iterator[MagnetarProcess]:
    """A broker of the test's own, with its own data dir, for tests that kill it."""
    with _running(request.node.name.replace("/", "_")[:40]) as process:
        _track(request, process)
        yield process


@pytest.fixture
def listeners_magnetar(request: pytest.FixtureRequest) -> Iterator[MagnetarProcess]:
    """A standalone with two advertised listeners: `internal` (127.0.0.1) and `external`
    (localhost), both on the one Pulsar port."""

    def settings(process: MagnetarProcess) -> str:
        port = process.pulsar_port
        return (
            f'advertised_listeners = "internal:pulsar://127.0.0.1:{port},external:pulsar://localhost:{port}"\n'
            'internal_listener_name = "internal"\n'
        )

    with _running("listeners", settings) as process:
        _track(request, process)
        yield process


@pytest.fixture
def compacting_magnetar(request: pytest.FixtureRequest) -> Iterator[MagnetarProcess]:
    """A standalone that compacts every topic past 1 KiB of uncompacted data, checking
    every second."""
    settings = (
        "broker_service_compaction_threshold_in_bytes = 1024\n"
        "broker_service_compaction_monitor_interval_in_seconds = 1\n"
    )
    with _running("compacting", lambda _: settings) as process:
        _track(request, process)
        yield process


@pytest.fixture
def client(magnetar: MagnetarProcess) -> Iterator[pulsar.Client]:
    client = make_client(magnetar)
    try:
        yield client
    finally:
        client.close()
