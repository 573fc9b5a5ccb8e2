"""Topic compaction with the real Apache Pulsar Python client against `magnetar standalone`:
the admin trigger and status, `read_compacted` readers and consumers, null-value tombstones,
TableView, the compaction-threshold policy, and a compacted view that survives a restart.
"""

from __future__ import annotations

import time

import pulsar
import pytest

from magnetar_process import MagnetarProcess, make_client
from test_producers import http, unique_name

RECEIVE_TIMEOUT_MS = 10_000


def compact(node: MagnetarProcess, local: str, timeout: float = 30.0) -> dict:
    """Triggers compaction over HTTP and waits for it to finish; the final status."""
    path = f"/admin/v2/persistent/public/default/{local}/compaction"
    status, body = http(node, "PUT", path)
    assert status == 204, body
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = http(node, "GET", path)
        assert status == 200, body
        if body["status"] in ("SUCCESS", "ERROR"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"compaction of {local} did not finish: {body}")


def read_all(client: pulsar.Client, topic: str, compacted: bool) -> list[tuple[str, bytes]]:
    reader = client.create_reader(topic, pulsar.MessageId.earliest, is_read_compacted=compacted)
    got = []
    while reader.has_message_available():
        message = reader.read_next(RECEIVE_TIMEOUT_MS)
        got.append((message.partition_key(), message.data()))
    reader.close()
    return got


def publish_history(client: pulsar.Client, topic: str, batching: bool) -> None:
    """Three keys: `a` updated twice, `b` deleted by a tombstone, `c` once; one keyless."""
    producer = client.create_producer(
        topic, batching_enabled=batching, batching_max_publish_delay_ms=50, block_if_queue_full=True
    )
    for key, value in [("a", b"a1"), ("b", b"b1"), ("c", b"c1"), ("a", b"a2"), ("b", None), ("a", b"a3")]:
        producer.send_async(value, None, partition_key=key)
    producer.send_async(b"no key", None)
    producer.flush()
    producer.close()


@pytest.mark.parametrize("batching", [False, True], ids=["single", "batched"])
def test_compaction_keeps_the_latest_value_of_each_key(
    client: pulsar.Client, magnetar: MagnetarProcess, batching: bool
) -> None:
    local = unique_name("compact")
    topic = f"persistent://public/default/{local}"
    status, body = http(magnetar, "GET", f"/admin/v2/persistent/public/default/{local}/compaction")
    publish_history(client, topic, batching)
    assert http(magnetar, "GET", f"/admin/v2/persistent/public/default/{local}/compaction")[1]["status"] == "NOT_RUN"
    # Before compaction a compacted read sees the whole topic.
    assert len(read_all(client, topic, compacted=True)) == 7
    result = compact(magnetar, local)
    assert result == {"status": "SUCCESS", "lastError": ""}
    compacted = read_all(client, topic, compacted=True)
    if batching:
        # A batch keeps its stale messages as empty `compacted_out` placeholders, as Pulsar's
        # compactor writes them; the C++ client hands them over as empty messages.
        compacted = [(key, value) for key, value in compacted if value]
    assert compacted == [("c", b"c1"), ("a", b"a3")]
    # A plain read still has every message.
    assert len(read_all(client, topic, compacted=False)) == 7
    # Later messages follow the compacted view.
    producer = client.create_producer(topic)
    producer.send(b"c2", partition_key="c")
    producer.close()
    tail = [(k, v) for k, v in read_all(client, topic, compacted=True) if v]
    assert tail == [("c", b"c1"), ("a", b"a3"), ("c", b"c2")]
    # The compaction cursor shows as a subscription, as in Pulsar.
    status, stats = http(magnetar, "GET", f"/admin/v2/persistent/public/default/{local}/stats")
    assert "__compaction" in stats["subscriptions"], stats["subscriptions"].keys()
    # Pulsar's compaction stats: the last run's time and how many messages it left out.
    assert stats["compaction"]["lastCompactionSucceedTimestamp"] > 0, stats["compaction"]
    assert stats["compaction"]["lastCompactionRemovedEventCount"] == 5, stats["compaction"]


def test_null_value_messages_are_stored_and_delivered(client: pulsar.Client) -> None:
    topic = f"persistent://public/default/{unique_name('tombstone')}"
    consumer = client.subscribe(topic, "s")
    producer = client.create_producer(topic, batching_enabled=False)
    producer.send(None, partition_key="gone")
    producer.send(b"value", partition_key="kept")
    first = consumer.receive(RECEIVE_TIMEOUT_MS)
    assert first.has_null_value() and first.partition_key() == "gone" and first.data() == b""
    second = consumer.receive(RECEIVE_TIMEOUT_MS)
    assert not second.has_null_value() and second.data() == b"value"
    consumer.close()
    producer.close()


def test_read_compacted_is_refused_on_a_shared_subscription(client: pulsar.Client) -> None:
    topic = f"persistent://public/default/{unique_name('rc-shared')}"
    with pytest.raises(pulsar.PulsarException):
        client.subscribe(topic, "s", consumer_type=pulsar.ConsumerType.Shared, is_read_compacted=True)


def test_table_view_sees_every_keys_latest_value_and_later_updates(
    client: pulsar.Client, magnetar: MagnetarProcess
) -> None:
    local = unique_name("table")
    topic = f"persistent://public/default/{local}"
    producer = client.create_producer(
        topic, batching_enabled=True, batching_max_publish_delay_ms=20, block_if_queue_full=True
    )
    for round_ in range(5):
        for key in range(20):
            producer.send_async(f"{key}-{round_}".encode(), None, partition_key=f"k{key}")
    producer.send_async(None, None, partition_key="k7")
    producer.flush()
    assert compact(magnetar, local)["status"] == "SUCCESS"
    table = client.create_table_view(topic)

    def snapshot() -> dict:
        seen = {}
        table.for_each(lambda key, value: seen.__setitem__(key, value))
        return seen

    expected = {f"k{key}": f"{key}-4".encode() for key in range(20) if key != 7}
    assert snapshot() == expected and len(table) == 19
    # Updates after the view was built reach it.
    producer.send(b"new", partition_key="k3")
    producer.send(b"back", partition_key="k7")
    producer.send(None, partition_key="k0")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (table.get("k3") == b"new" and table.get("k7") == b"back"):
        time.sleep(0.05)
    assert table.get("k3") == b"new" and table.get("k7") == b"back"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and table.get("k0") is not None:
        time.sleep(0.05)
    assert table.get("k0") is None and "k0" not in snapshot()
    table.close()
    producer.close()


def test_threshold_compacts_automatically_and_the_view_survives_restarts(compacting_magnetar) -> None:
    node = compacting_magnetar
    local = unique_name("auto")
    topic = f"persistent://public/default/{local}"
    client = make_client(node)
    producer = client.create_producer(topic, batching_enabled=False)
    for i in range(200):
        producer.send(f"value-{i}".encode() * 4, partition_key=f"k{i % 5}")
    producer.close()
    path = f"/admin/v2/persistent/public/default/{local}/compaction"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and http(node, "GET", path)[1]["status"] != "SUCCESS":
        time.sleep(0.2)
    assert http(node, "GET", path)[1]["status"] == "SUCCESS"
    expected = [(f"k{i % 5}", f"value-{i}".encode() * 4) for i in range(195, 200)]
    assert read_all(client, topic, compacted=True) == expected
    client.close()
    # A policy can switch it off for the namespace (0: never).
    status, _ = http(node, "POST", "/admin/v2/namespaces/public/default/compactionThreshold", "0")
    assert status == 204
    assert http(node, "GET", "/admin/v2/namespaces/public/default/compactionThreshold")[1] == 0
    # The compacted view is on the bookies and in the record: a restart keeps it.
    node.stop()
    node.start()
    client = make_client(node)
    assert read_all(client, topic, compacted=True) == expected
    client.close()


def test_a_crash_during_compaction_loses_and_doubles_nothing(own_magnetar: MagnetarProcess) -> None:
    node = own_magnetar
    local = unique_name("crash")
    topic = f"persistent://public/default/{local}"
    keys = 500

    def publish(first: int, last: int) -> None:
        client = make_client(node)
        # send_async fails a message at once when the queue is full unless it blocks.
        producer = client.create_producer(
            topic, batching_enabled=True, batching_max_messages=100, block_if_queue_full=True
        )
        for i in range(first, last):
            producer.send_async(f"{i}".encode(), None, partition_key=f"k{i % keys}")
        producer.flush()
        producer.close()
        client.close()

    def latest_per_key() -> tuple[dict, int]:
        client = make_client(node)
        seen: dict = {}
        count = 0
        for key, value in read_all(client, topic, compacted=True):
            if value:
                seen[key] = value
                count += 1
        client.close()
        return seen, count

    publish(0, 20_000)
    assert compact(node, local)["status"] == "SUCCESS"
    publish(20_000, 40_000)
    expected = {f"k{k}": str(40_000 - keys + k).encode() for k in range(keys)}
    # The broker dies in phase two of the next compaction: its new ledger is written in part.
    node.stop()
    node.env["MAGNETAR_TEST_CRASH_IN_COMPACTION"] = "1"
    node.start()
    path = f"/admin/v2/persistent/public/default/{local}/compaction"
    status, body = http(node, "PUT", path)
    assert status == 204, body
    node.process.wait(timeout=30)
    assert node.process.returncode != 0, "the crash point aborts the process"
    node.env.clear()
    node.start()
    # Nothing published is lost, and the first compaction's view is still in force, followed by
    # the log: every key's latest value is there.
    client = make_client(node)
    assert len(read_all(client, topic, compacted=False)) == 40_000
    client.close()
    seen, _ = latest_per_key()
    assert seen == expected
    # Compacting again removes the abandoned ledger and finishes: one message per key.
    assert compact(node, local)["status"] == "SUCCESS"
    seen, count = latest_per_key()
    assert seen == expected and count == keys, (len(seen), count)
    assert "did not finish" in node.log_tail(2000)
