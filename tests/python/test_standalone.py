"""The real Apache Pulsar Python client (pulsar-client, C++ core) against `magnetar standalone`.

These pin the compatibility promise: an unmodified Pulsar client produces, consumes,
acknowledges and survives a broker crash, and the broker keeps the durability contract:
every message acknowledged to a producer survives kill -9, and after a crash only the
consumer's last few unpersisted acks may be redelivered, never a message skipped.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid

import pulsar
import pytest

from magnetar_process import MagnetarProcess, make_client

# Bound on one receive() while messages are expected; generous for a debug build.
RECEIVE_TIMEOUT_MS = 10_000
# How long we listen for a message that must NOT come. Not a sleep: a bounded receive that
# must time out.
QUIET_RECEIVE_TIMEOUT_MS = 1_000


def unique_topic(prefix: str) -> str:
    return f"persistent://public/default/{prefix}-{uuid.uuid4().hex[:10]}"


def expect_no_message(consumer: pulsar.Consumer) -> None:
    try:
        message = consumer.receive(timeout_millis=QUIET_RECEIVE_TIMEOUT_MS)
    except pulsar.Timeout:
        return
    pytest.fail(f"unexpected extra message {message.data()!r} (id {message.message_id()})")


def receive_payloads(consumer: pulsar.Consumer, count: int) -> list[str]:
    payloads = []
    for _ in range(count):
        message = consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
        payloads.append(message.data().decode())
        consumer.acknowledge(message)
    return payloads


@pytest.mark.parametrize("batching", [False, True], ids=["unbatched", "batched"])
def test_produce_consume_roundtrip(client: pulsar.Client, batching: bool) -> None:
    topic = unique_topic("py-roundtrip")
    expected = [f"roundtrip-{i}" for i in range(10)]

    if batching:
        producer = client.create_producer(
            topic, batching_enabled=True, batching_max_publish_delay_ms=10
        )
        results: list[pulsar.Result] = []
        done = threading.Condition()

        def on_sent(result: pulsar.Result, _message_id: pulsar.MessageId) -> None:
            # Runs on the client's I/O thread; must not raise (that would abort the process).
            with done:
                results.append(result)
                done.notify_all()

        for payload in expected:
            producer.send_async(payload.encode(), on_sent)
        producer.flush()
        with done:
            assert done.wait_for(lambda: len(results) == len(expected), timeout=30), (
                f"only {len(results)} of {len(expected)} send callbacks ran"
            )
        assert results == [pulsar.Result.Ok] * len(expected)
    else:
        producer = client.create_producer(topic)
        for payload in expected:
            producer.send(payload.encode())

    consumer = client.subscribe(
        topic,
        "roundtrip-sub",
        consumer_type=pulsar.ConsumerType.Exclusive,
        initial_position=pulsar.InitialPosition.Earliest,
    )
    assert receive_payloads(consumer, len(expected)) == expected
    expect_no_message(consumer)
    consumer.close()
    producer.close()


def test_kill9_keeps_acknowledged_messages_and_acks(own_magnetar: MagnetarProcess) -> None:
    topic = unique_topic("py-kill9")
    subscription = "kill9-sub"
    total, acked = 1000, 500
    # After a crash the broker may redeliver the acks it had not yet persisted; it must never
    # skip a message. This many redeliveries is "a few" for the purpose of this test.
    redelivery_allowance = 100

    # ---- before the crash: every send() returns only after the broker's SEND_RECEIPT, i.e.
    # once the message is durable, so all 1000 must survive.
    client = make_client(own_magnetar)
    producer = client.create_producer(topic)
    for i in range(total):
        producer.send(f"msg-{i}".encode())

    consumer = client.subscribe(
        topic,
        subscription,
        consumer_type=pulsar.ConsumerType.Exclusive,
        initial_position=pulsar.InitialPosition.Earliest,
    )
    for i in range(acked):
        message = consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
        assert message.data().decode() == f"msg-{i}"
        if i < acked - 1:
            consumer.acknowledge(message)
        else:
            consumer.acknowledge_cumulative(message)
    # The C++ client groups acks and sends them every 100 ms; closing the consumer flushes
    # them and waits for the broker's reply, so the broker has seen them all. Whether it has
    # persisted them is exactly what the kill -9 below leaves open.
    consumer.close()
    producer.close()
    client.close()

    own_magnetar.kill9()
    own_magnetar.start()

    # ---- after the restart: same data dir, same ports, a new client.
    client = make_client(own_magnetar)
    try:
        consumer = client.subscribe(
            topic,
            subscription,
            consumer_type=pulsar.ConsumerType.Exclusive,
            initial_position=pulsar.InitialPosition.Earliest,
        )
        received: list[int] = []
        deadline = time.monotonic() + 180
        while not received or received[-1] < total - 1:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            assert remaining_ms > 0, f"gave up after receiving {summarize(received)}"
            try:
                message = consumer.receive(timeout_millis=min(RECEIVE_TIMEOUT_MS, remaining_ms))
            except pulsar.Timeout:
                pytest.fail(
                    f"no message for {RECEIVE_TIMEOUT_MS} ms after receiving {summarize(received)}"
                )
            payload = message.data().decode()
            assert payload.startswith("msg-"), payload
            received.append(int(payload.removeprefix("msg-")))
            consumer.acknowledge(message)

        first = received[0]
        # Nothing skipped: redelivery starts at or before the first unacknowledged message...
        assert first <= acked, f"messages msg-{acked}..msg-{first - 1} were lost"
        # ...and only the tail of the acknowledged range comes back.
        assert acked - first <= redelivery_allowance, (
            f"{acked - first} acknowledged messages were redelivered (from msg-{first})"
        )
        # In order, contiguous, no duplicates, nothing missing up to msg-999.
        assert received == list(range(first, total)), (
            f"out of order, duplicated or missing: {summarize(received)}"
        )
        expect_no_message(consumer)

        # The topic stays writable after recovery, and new messages follow the old ones.
        producer = client.create_producer(topic)
        producer.send(f"msg-{total}".encode())
        message = consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
        assert message.data().decode() == f"msg-{total}"
        consumer.acknowledge(message)
        producer.close()
        consumer.close()
    finally:
        client.close()


@pytest.mark.parametrize("restart", ["graceful", "kill9"])
def test_batch_index_acks_survive_a_restart(own_magnetar: MagnetarProcess, restart: str) -> None:
    """1,000 messages in one batch entry, 500 acknowledged one index at a time, then a restart:
    only the 500 never acknowledged come back (the acked indexes are persisted with the
    cursor, as Pulsar does with batch-index acknowledgement on)."""
    topic = unique_topic(f"py-batch-index-{restart}")
    total = 1000
    client = make_client(own_magnetar)
    consumer = client.subscribe(
        topic, "bi", consumer_type=pulsar.ConsumerType.Shared, batch_index_ack_enabled=True,
        receiver_queue_size=total,
    )
    producer = client.create_producer(
        topic, batching_enabled=True, batching_max_messages=total,
        batching_max_allowed_size_in_bytes=1024 * 1024, batching_max_publish_delay_ms=1000,
    )
    for i in range(total):
        producer.send_async(f"b-{i}".encode(), None)
    producer.flush()
    producer.close()
    messages = [consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS) for _ in range(total)]
    entries = {(m.message_id().ledger_id(), m.message_id().entry_id()) for m in messages}
    assert len(entries) == 1, f"the messages form one batch entry: {len(entries)} entries"
    for message in messages:
        if int(message.data().decode().split("-")[1]) % 2 == 0:
            consumer.acknowledge(message)
    # Closing flushes the client's grouped acks and waits until the broker persisted them.
    consumer.close()
    client.close()

    if restart == "kill9":
        own_magnetar.kill9()
    else:
        assert own_magnetar.stop() == 0
    own_magnetar.start()

    client = make_client(own_magnetar)
    try:
        reopened = client.subscribe(
            topic, "bi", consumer_type=pulsar.ConsumerType.Shared, batch_index_ack_enabled=True,
            receiver_queue_size=total,
        )
        rest = []
        for _ in range(total // 2):
            message = reopened.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
            rest.append(int(message.data().decode().split("-")[1]))
            reopened.acknowledge(message)
        assert sorted(rest) == list(range(1, total, 2)), "only the unacknowledged odd indexes come back"
        expect_no_message(reopened)
        reopened.close()
    finally:
        client.close()


def summarize(indexes: list[int]) -> str:
    """Runs of consecutive indexes, e.g. '480..999' or '480..600, 590..999'."""
    if not indexes:
        return "nothing"
    runs, start, previous = [], indexes[0], indexes[0]
    for index in indexes[1:]:
        if index != previous + 1:
            runs.append((start, previous))
            start = index
        previous = index
    runs.append((start, previous))
    text = ", ".join(f"msg-{a}" if a == b else f"msg-{a}..msg-{b}" for a, b in runs[:20])
    return text + (f", ... ({len(runs)} runs)" if len(runs) > 20 else "")


def test_latest_position_skips_existing(client: pulsar.Client) -> None:
    # The short form of a name means persistent://public/default/<name>, as in Pulsar.
    topic = f"py-latest-{uuid.uuid4().hex[:10]}"
    producer = client.create_producer(topic)
    for i in range(5):
        producer.send(f"before-{i}".encode())

    # subscribe() returns once the broker has created the subscription at the topic's end.
    consumer = client.subscribe(
        topic,
        "latest-sub",
        consumer_type=pulsar.ConsumerType.Exclusive,
        initial_position=pulsar.InitialPosition.Latest,
    )
    for i in range(5):
        producer.send(f"after-{i}".encode())

    assert receive_payloads(consumer, 5) == [f"after-{i}" for i in range(5)]
    expect_no_message(consumer)
    consumer.close()
    producer.close()


@pytest.mark.parametrize(
    "bad_topic",
    [
        # Passes the C++ client's own name check, so it is the broker that refuses it (with
        # InvalidTopicName, which the raw-protocol test in tests/tests/bad_input.rs pins). The
        # C++ client treats InvalidTopicName as retryable and keeps asking until its operation
        # timeout, so here the refusal surfaces as an exception after that timeout.
        "persistent://public/default/bad topic name with spaces",
        # Refused by the client before it reaches the broker.
        "persistent://only-two/parts",
    ],
    ids=["spaces", "two-parts"],
)
def test_invalid_topic_is_refused_and_broker_keeps_serving(
    client: pulsar.Client, bad_topic: str
) -> None:
    with pytest.raises(pulsar.PulsarException):
        client.create_producer(bad_topic)

    topic = unique_topic("py-after-invalid")
    producer = client.create_producer(topic)
    producer.send(b"still-serving")
    consumer = client.subscribe(
        topic,
        "after-invalid-sub",
        consumer_type=pulsar.ConsumerType.Exclusive,
        initial_position=pulsar.InitialPosition.Earliest,
    )
    assert receive_payloads(consumer, 1) == ["still-serving"]
    consumer.close()
    producer.close()


def test_http_admin_and_metrics_are_served(magnetar: MagnetarProcess) -> None:
    with urllib.request.urlopen(f"{magnetar.http_url}/admin/v2/clusters", timeout=10) as reply:
        assert reply.status == 200
        assert json.loads(reply.read()) == ["standalone"]
    with urllib.request.urlopen(f"{magnetar.http_url}/metrics", timeout=10) as reply:
        assert reply.status == 200
        body = reply.read().decode()
        # Prometheus text format: at least one sample line ("name[{labels}] value").
        samples = [line for line in body.splitlines() if line and not line.startswith("#")]
        assert samples, f"no samples in /metrics:\n{body[:2000]}"
