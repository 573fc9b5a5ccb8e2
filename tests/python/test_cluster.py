"""The Python Pulsar client against a Magnetar cluster started by deploy/local-cluster.sh:
etcd, three bookies and two brokers, each its own process. The broker that owns the topic is
killed with SIGKILL in the middle of a produce and consume run: the client moves to the
other broker through lookups and goes on, with nothing acknowledged lost and order kept.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pulsar
import pytest

from conftest import _track
from magnetar_process import REPO, magnetar_bin

SCRIPT = REPO / "deploy" / "local-cluster.sh"
KEYS = 8


class LocalCluster:
    def __init__(self, state_dir: Path, port_base: int) -> None:
        self.state_dir = state_dir
        self.port_base = port_base
        self.env = dict(os.environ)
        self.env.update(
            MAGNETAR_BIN=str(magnetar_bin()),
            MAGNETAR_CLUSTER_DIR=str(state_dir),
            MAGNETAR_CLUSTER_PORT_BASE=str(port_base),
        )

    def run(self, *args: str) -> str:
        done = subprocess.run(
            ["bash", str(SCRIPT), *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0 and args[0] != "status":
            raise AssertionError(f"local-cluster.sh {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    # Ports as local-cluster.sh assigns them from the base.
    def pulsar_port(self, broker: int) -> int:
        return self.port_base + 5 + 2 * broker

    def http_port(self, broker: int) -> int:
        return self.port_base + 6 + 2 * broker

    @property
    def service_url(self) -> str:
        return f"pulsar://127.0.0.1:{self.pulsar_port(0)},127.0.0.1:{self.pulsar_port(1)}"

    def pid(self, name: str) -> int:
        return int((self.state_dir / name / f"{name}.pid").read_text().strip())

    def owner(self, topic: str, broker: int = 0) -> str:
        """The owner's Pulsar URL by the HTTP lookup of `broker` (urllib follows the redirect
        to a broker chosen for an unowned bundle)."""
        url = f"http://127.0.0.1:{self.http_port(broker)}/lookup/v2/topic/persistent/{topic}"
        with urllib.request.urlopen(url, timeout=30) as answer:
            return json.load(answer)["brokerUrl"]

    name = "local cluster"

    def log_tail(self) -> str:
        return self.logs()

    def logs(self) -> str:
        parts = []
        for log in sorted(self.state_dir.glob("*/*.log")):
            lines = log.read_text(errors="replace").splitlines()[-80:]
            parts.append(f"--- {log.name} ---\n" + "\n".join(lines))
        return "\n".join(parts)


def _free_base() -> int:
    """A base below the kernel's ephemeral range with nine free consecutive ports."""
    for _ in range(50):
        base = random.randrange(20000, 32000 - 9)
        try:
            socks = []
            for port in range(base, base + 9):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no nine free consecutive ports")


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    with tempfile.TemporaryDirectory(prefix="magnetar-cluster-") as workdir:
        local = LocalCluster(Path(workdir) / "cluster", _free_base())
        _track(request, local)  # a failed test's report carries the cluster's logs
        try:
            local.run("up")
            yield local
        finally:
            local.run("down")


def test_killing_the_owning_broker_moves_the_client_without_losing_messages(cluster: LocalCluster) -> None:
    topic = f"public/default/py-failover-{random.randrange(1 << 30)}"
    owner = cluster.owner(topic)
    victim = 0 if owner.endswith(f":{cluster.pulsar_port(0)}") else 1
    assert owner.endswith(f":{cluster.pulsar_port(victim)}"), owner
    survivor = 1 - victim
    assert cluster.owner(topic, broker=survivor) == owner, "both brokers name the same owner"

    client = pulsar.Client(cluster.service_url, operation_timeout_seconds=60)
    try:
        producer = client.create_producer(
            f"persistent://{topic}",
            batching_enabled=False,
            send_timeout_millis=60_000,
            block_if_queue_full=True,
            max_pending_messages=64,
        )
        consumer = client.subscribe(
            f"persistent://{topic}",
            "through",
            consumer_type=pulsar.ConsumerType.Exclusive,
            initial_position=pulsar.InitialPosition.Earliest,
        )
        total, kill_at = 2000, 700
        received: list[int] = []
        failure: list[str] = []

        def consume() -> None:
            highest = -1
            deadline = time.monotonic() + 180
            while highest < total - 1 and time.monotonic() < deadline:
                try:
                    message = consumer.receive(timeout_millis=5000)
                except pulsar.Timeout:
                    continue
                index = int(message.data().decode().split("-")[1])
                if message.partition_key() != f"key-{index % KEYS}":
                    failure.append(f"message {index} has key {message.partition_key()!r}")
                received.append(index)
                highest = max(highest, index)
                consumer.acknowledge(message)

        consumer_thread = threading.Thread(target=consume, daemon=True)
        consumer_thread.start()

        results: dict[int, str] = {}
        acknowledged = threading.Semaphore(0)

        def on_sent(index: int):
            def callback(result, _message_id) -> None:
                results[index] = str(result)
                acknowledged.release()

            return callback

        for index in range(total):
            producer.send_async(
                f"message-{index:06d}".encode(), on_sent(index), partition_key=f"key-{index % KEYS}"
            )
            if index == kill_at:
                # Wait until the first messages are acknowledged, then kill the owner.
                for _ in range(kill_at // 2):
                    assert acknowledged.acquire(timeout=60), "receipts before the kill"
                os.kill(cluster.pid(f"broker-{victim + 1}"), signal.SIGKILL)
        producer.flush()
        deadline = time.monotonic() + 120
        while len(results) < total and time.monotonic() < deadline:
            time.sleep(0.1)
        failed = {index: result for index, result in results.items() if result != str(pulsar.Result.Ok)}
        assert len(results) == total and not failed, f"sends not acknowledged: {len(results)} answered, failed {dict(list(failed.items())[:5])}"

        consumer_thread.join(timeout=200)
        assert not failure, failure[:5]
        seen: set[int] = set()
        last = -1
        for index in received:
            if index in seen:
                continue  # redelivered after the move (at-least-once)
            assert index > last, f"message {index} arrived after {last}: order broken"
            seen.add(index)
            last = index
        missing = [index for index in range(total) if index not in seen]
        assert not missing, f"{len(missing)} acknowledged messages never arrived, first {missing[:10]}"
        assert cluster.owner(topic, broker=survivor).endswith(f":{cluster.pulsar_port(survivor)}"), "the survivor owns it"
    finally:
        client.close()


def _admin(cluster: LocalCluster, broker: int, method: str, path: str, body: object = None) -> int:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"http://127.0.0.1:{cluster.http_port(broker)}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status


def test_a_policy_set_through_one_broker_applies_on_the_other_within_a_second(cluster: LocalCluster) -> None:
    assert _admin(cluster, 0, "PUT", "/admin/v2/tenants/platform", {"allowedClusters": ["magnetar-local"]}) == 204
    assert _admin(cluster, 0, "PUT", "/admin/v2/namespaces/platform/limits") == 204
    topic = "persistent://platform/limits/orders"
    owner_url = cluster.owner("platform/limits/orders")
    owner = 0 if owner_url.endswith(f":{cluster.pulsar_port(0)}") else 1
    other = 1 - owner
    client = pulsar.Client(cluster.service_url, operation_timeout_seconds=10)
    try:
        first = client.create_producer(topic, producer_name="first")
        first.send(b"before the policy")
        assert _admin(cluster, other, "POST", "/admin/v2/namespaces/platform/limits/maxProducersPerTopic", 1) == 204
        time.sleep(1.0)
        with pytest.raises(Exception, match="(?i)busy|max producers"):
            client.create_producer(topic, producer_name="second")
        first.send(b"the first producer goes on")
    finally:
        client.close()
