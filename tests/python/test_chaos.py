"""The chaos harness (tests/chaos/chaos.py), short form: a cluster of real processes in
network namespaces (three etcd members, three bookies, two brokers), the Rust and Python
workloads, and a few seeded faults, checked end to end.

Seed 2 with six faults draws one of each kind: kill -9 of a bookie, an isolated etcd member,
a bookie paused longer than its registration session (before the fix it never registered
again, and a topic whose last ledger it held could not be recovered: seed 2 found it), a
bookie cut off from the brokers, a full bookie disk, and the broker that owns a topic cut
off from etcd (it must give its bundles up before the other broker takes them over).

Needs root (network namespaces and loop mounts); skips otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from magnetar_process import REPO, magnetar_bin

CHAOS = REPO / "tests" / "chaos" / "chaos.py"


def _worker_bin() -> Path:
    path = magnetar_bin().parent / "examples" / "chaos_worker"
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} not found: build it with `cargo build --workspace --all-targets`", pytrace=False)
    return path


def _run_chaos(*args: str, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="magnetar-chaos-test-") as workdir:
        report_path = Path(workdir) / "report.json"
        done = subprocess.run(
            [sys.executable, str(CHAOS), "--magnetar", str(magnetar_bin()), "--worker", str(_worker_bin()),
             "--json", str(report_path), *args],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        output = done.stdout + done.stderr
        assert report_path.exists(), f"the harness wrote no report (exit {done.returncode}):\n{output[-6000:]}"
        report = json.loads(report_path.read_text())
        report["_output"] = output
        report["_returncode"] = done.returncode
        return report


needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="the chaos harness needs root for network namespaces and loop mounts"
)


@needs_root
def test_a_short_seeded_schedule_loses_nothing_and_keeps_order() -> None:
    report = _run_chaos("--seed", "2", "--faults", "6", timeout=600)
    output = report["_output"]
    totals = report["totals"]
    assert totals["faults"] == 6, output
    kinds = {fault["kind"] for fault in report["faults"]}
    assert kinds == {"kill", "pause", "broker_etcd", "bookie_broker", "disk_full", "etcd_member"}, output
    assert totals["acked"] > 1000, f"too little traffic to judge:\n{output}"
    assert totals["lost"] == 0, output
    assert totals["not_stored"] == 0, output
    assert totals["duplicated_dedup"] == 0, output
    assert totals["reordered"] == 0, output
    assert totals["redelivered_after_persisted_ack"] == 0, output
    assert totals["not_recovered"] == 0, output
    assert not report["failures"], output
    assert report["_returncode"] == 0, output


@needs_root
def test_a_broker_cut_off_from_etcd_stops_serving_before_its_bundles_move() -> None:
    report = _run_chaos("--seed", "11", "--faults", "2", "--kinds", "broker_etcd", timeout=400)
    output = report["_output"]
    cuts = [fault for fault in report["faults"] if fault["kind"] == "broker_etcd"]
    assert len(cuts) == 2, output
    for cut in cuts:
        # The cut broker owned a topic of the workload: it gave it up, and the other broker
        # took it over only afterwards.
        assert cut["session_lost_at"] is not None, f"{cut}\n{output}"
        assert cut["taken_over_at"] is not None, f"{cut}\n{output}"
        assert cut["session_lost_at"] < cut["taken_over_at"], f"{cut}\n{output}"
        assert cut["recovery_s"] is not None, f"{cut}\n{output}"
    assert report["totals"]["lost"] == 0, output
    assert report["totals"]["duplicated_dedup"] == 0, output
    assert not report["failures"], output
