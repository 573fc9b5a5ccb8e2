"""Producer features with the real Apache Pulsar Python client against `magnetar standalone`:
partitioned topics created over HTTP, batching with compression, chunking, deduplication,
producer access modes, and the admin/lookup HTTP routes behind them.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
import uuid

import pulsar
import pytest

from magnetar_process import MagnetarProcess, make_client

RECEIVE_TIMEOUT_MS = 10_000
QUIET_RECEIVE_TIMEOUT_MS = 1_000


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def http(node: MagnetarProcess, method: str, path: str, body: str | None = None) -> tuple[int, object]:
    """One HTTP request; the status and the decoded JSON body (None when empty)."""
    data = body.encode() if body is not None else None
    request = urllib.request.Request(f"{node.http_url}{path}", data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            raw = reply.read()
            return reply.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, json.loads(raw) if raw else None


def expect_no_message(consumer: pulsar.Consumer) -> None:
    try:
        message = consumer.receive(timeout_millis=QUIET_RECEIVE_TIMEOUT_MS)
    except pulsar.Timeout:
        return
    pytest.fail(f"unexpected extra message {message.data()[:40]!r} (id {message.message_id()})")


def test_partitioned_topic_admin_routes(magnetar: MagnetarProcess) -> None:
    local = unique_name("py-admin-parts")
    path = f"/admin/v2/persistent/public/default/{local}/partitions"

    assert http(magnetar, "GET", path) == (200, {"partitions": 0})
    assert http(magnetar, "PUT", path, "3")[0] == 204
    assert http(magnetar, "GET", path) == (200, {"partitions": 3})

    status, body = http(magnetar, "PUT", path, "5")
    assert status == 409, body
    assert "already exists" in body["reason"]
    assert http(magnetar, "GET", path) == (200, {"partitions": 3}), "a refused re-create changes nothing"

    status, body = http(magnetar, "PUT", f"/admin/v2/persistent/public/default/{unique_name('zero')}/partitions", "0")
    assert status == 400 and "reason" in body
    status, body = http(magnetar, "PUT", "/admin/v2/persistent/public/nope/t/partitions", "2")
    assert status == 404 and "reason" in body

    status, listed = http(magnetar, "GET", "/admin/v2/persistent/public/default/partitioned")
    assert status == 200 and f"persistent://public/default/{local}" in listed

    status, lookup = http(magnetar, "GET", f"/lookup/v2/topic/persistent/public/default/{local}")
    assert status == 200
    assert lookup["brokerUrl"] == magnetar.service_url
    assert lookup["httpUrl"] == magnetar.http_url

    assert http(magnetar, "DELETE", path)[0] == 204
    assert http(magnetar, "GET", path) == (200, {"partitions": 0})
    assert http(magnetar, "DELETE", path)[0] == 404


def test_partitioned_topic_round_robin_reaches_every_partition(
    magnetar: MagnetarProcess, client: pulsar.Client
) -> None:
    local = unique_name("py-parts")
    topic = f"persistent://public/default/{local}"
    assert http(magnetar, "PUT", f"/admin/v2/persistent/public/default/{local}/partitions", "4")[0] == 204

    consumer = client.subscribe(topic, "sub", initial_position=pulsar.InitialPosition.Earliest)
    producer = client.create_producer(
        topic,
        batching_enabled=False,
        message_routing_mode=pulsar.PartitionsRoutingMode.RoundRobinDistribution,
    )
    assert len(producer.topic()) > 0
    expected = {f"part-{i}" for i in range(40)}
    partitions_used = set()
    for body in sorted(expected):
        message_id = producer.send(body.encode())
        partitions_used.add(message_id.partition())
    assert partitions_used == {0, 1, 2, 3}

    received = set()
    for _ in range(len(expected)):
        message = consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
        received.add(message.data().decode())
        assert message.topic_name().startswith(f"{topic}-partition-")
        consumer.acknowledge(message)
    assert received == expected
    expect_no_message(consumer)

    # Every partition is an ordinary topic holding its share.
    status, topics = http(magnetar, "GET", "/admin/v2/persistent/public/default")
    assert status == 200
    for index in range(4):
        partition = f"{topic}-partition-{index}"
        assert partition in topics
        status, stats = http(magnetar, "GET", f"/admin/v2/persistent/public/default/{local}-partition-{index}/stats")
        assert status == 200 and stats["msgInCounter"] == 10, stats
    producer.close()
    consumer.close()


def test_received_message_ids_carry_their_partition_with_a_custom_router(
    magnetar: MagnetarProcess, client: pulsar.Client
) -> None:
    local = unique_name("py-router")
    topic = f"persistent://public/default/{local}"
    assert http(magnetar, "PUT", f"/admin/v2/persistent/public/default/{local}/partitions", "3")[0] == 204
    consumer = client.subscribe(topic, "sub", initial_position=pulsar.InitialPosition.Earliest)
    # The key names the partition: "p2" goes to partition 2.
    producer = client.create_producer(
        topic, batching_enabled=False, message_router=lambda message, count: int(message.partition_key()[1:])
    )
    sent = {}
    for i in range(9):
        key = f"p{i % 3}"
        sent[f"m{i}"] = producer.send(f"m{i}".encode(), partition_key=key).partition()
    assert sorted(set(sent.values())) == [0, 1, 2]
    for _ in range(9):
        message = consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
        body = message.data().decode()
        # MESSAGE carries the partition in its id, as Pulsar's broker writes it.
        assert message.message_id().partition() == sent[body] == int(message.partition_key()[1:]), body
        assert message.topic_name() == f"{topic}-partition-{sent[body]}"
        consumer.acknowledge(message)
    expect_no_message(consumer)
    producer.close()
    consumer.close()


@pytest.mark.parametrize(
    "compression", [pulsar.CompressionType.LZ4, pulsar.CompressionType.ZSTD], ids=["lz4", "zstd"]
)
def test_batched_compressed_messages_arrive_intact(client: pulsar.Client, compression) -> None:
    topic = f"persistent://public/default/{unique_name('py-compress')}"
    consumer = client.subscribe(topic, "sub", initial_position=pulsar.InitialPosition.Earliest)
    producer = client.create_producer(
        topic,
        compression_type=compression,
        batching_enabled=True,
        batching_max_messages=50,
        batching_max_publish_delay_ms=50,
    )
    # Repetitive bodies compress well, so the stored entries really are compressed batches.
    expected = [f"compressed-{i}-" + "x" * 500 for i in range(200)]
    done = threading.Event()
    results: list[pulsar.Result] = []

    def sent(result: pulsar.Result, _message_id) -> None:
        results.append(result)
        if len(results) == len(expected):
            done.set()

    for body in expected:
        producer.send_async(body.encode(), sent)
    producer.flush()
    assert done.wait(30)
    assert all(result == pulsar.Result.Ok for result in results)

    received = []
    for _ in expected:
        message = consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
        received.append(message.data().decode())
        consumer.acknowledge(message)
    assert received == expected
    expect_no_message(consumer)
    producer.close()
    consumer.close()


def test_chunked_message_bigger_than_max_size_is_reassembled(client: pulsar.Client) -> None:
    topic = f"persistent://public/default/{unique_name('py-chunks')}"
    consumer = client.subscribe(topic, "sub", initial_position=pulsar.InitialPosition.Earliest)
    producer = client.create_producer(topic, chunking_enabled=True, batching_enabled=False)
    # Larger than the broker's 5 MiB maximum message size, and not compressible.
    big = uuid.uuid4().bytes * (7 * 1024 * 1024 // 16)
    producer.send(big)
    producer.send(b"after-the-big-one")

    message = consumer.receive(timeout_millis=30_000)
    assert len(message.data()) == len(big)
    assert message.data() == big
    consumer.acknowledge(message)
    assert consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS).data() == b"after-the-big-one"
    producer.close()
    consumer.close()


def test_chunked_messages_pass_deduplication_whole(own_magnetar: MagnetarProcess) -> None:
    # Every chunk of a message carries its sequence id: only the last chunk counts for
    # deduplication, so the whole message is stored once, and a resend is dropped whole.
    assert http(own_magnetar, "POST", "/admin/v2/namespaces/public/default/deduplication", "true")[0] == 204
    topic = f"persistent://public/default/{unique_name('py-chunk-dedup')}"
    client = make_client(own_magnetar)
    consumer = client.subscribe(topic, "sub", initial_position=pulsar.InitialPosition.Earliest)
    producer = client.create_producer(
        topic, producer_name="chunky", chunking_enabled=True, batching_enabled=False
    )
    big = uuid.uuid4().bytes * (7 * 1024 * 1024 // 16)
    producer.send(big, sequence_id=1)
    producer.send(big, sequence_id=1)
    producer.send(b"next", sequence_id=2)
    message = consumer.receive(timeout_millis=30_000)
    assert message.data() == big
    consumer.acknowledge(message)
    assert consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS).data() == b"next"
    expect_no_message(consumer)
    client.close()


def test_unchunked_message_over_max_size_is_refused(client: pulsar.Client) -> None:
    topic = f"persistent://public/default/{unique_name('py-too-big')}"
    producer = client.create_producer(topic, batching_enabled=False)
    with pytest.raises(pulsar.MessageTooBig):
        producer.send(b"x" * (6 * 1024 * 1024))
    # The connection and the producer still work.
    producer.send(b"small")
    producer.close()


def test_exclusive_producer_refuses_a_second(client: pulsar.Client) -> None:
    topic = f"persistent://public/default/{unique_name('py-exclusive')}"
    first = client.create_producer(topic, access_mode=pulsar.ProducerAccessMode.Exclusive)
    with pytest.raises(pulsar.ProducerFenced):
        client.create_producer(topic, access_mode=pulsar.ProducerAccessMode.Exclusive)
    with pytest.raises(pulsar.ProducerBusy):
        client.create_producer(topic)
    first.send(b"from-the-exclusive-one")
    first.close()
    # Once it left, another may take the topic.
    second = client.create_producer(topic, access_mode=pulsar.ProducerAccessMode.Exclusive)
    second.close()


def test_wait_for_exclusive_producer_gets_the_topic_when_the_holder_leaves(client: pulsar.Client) -> None:
    topic = f"persistent://public/default/{unique_name('py-wait-exclusive')}"
    holder = client.create_producer(topic, access_mode=pulsar.ProducerAccessMode.Exclusive)
    created: list[pulsar.Producer] = []
    errors: list[Exception] = []

    def create_waiting() -> None:
        try:
            created.append(client.create_producer(topic, access_mode=pulsar.ProducerAccessMode.WaitForExclusive))
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    waiter = threading.Thread(target=create_waiting)
    waiter.start()
    waiter.join(timeout=2)
    assert waiter.is_alive(), f"the waiting producer did not wait: {created or errors}"
    holder.close()
    waiter.join(timeout=20)
    assert not waiter.is_alive() and not errors, errors
    created[0].send(b"now-exclusive")
    created[0].close()


def test_deduplication_drops_resent_sequence_ids(own_magnetar: MagnetarProcess) -> None:
    topic = f"persistent://public/default/{unique_name('py-dedup')}"
    assert http(own_magnetar, "GET", "/admin/v2/namespaces/public/default/deduplication") == (200, False)
    assert http(own_magnetar, "POST", "/admin/v2/namespaces/public/default/deduplication", "true")[0] == 204
    assert http(own_magnetar, "GET", "/admin/v2/namespaces/public/default/deduplication") == (200, True)

    client = make_client(own_magnetar)
    consumer = client.subscribe(topic, "sub", initial_position=pulsar.InitialPosition.Earliest)
    producer = client.create_producer(topic, producer_name="dedup-producer", batching_enabled=False)
    assert producer.last_sequence_id() == -1
    for sequence_id in range(10):
        producer.send(f"m-{sequence_id}".encode(), sequence_id=sequence_id)
    producer.close()

    # A new session with the same name resumes after the last stored id, and ids resent from
    # an earlier point are acknowledged but not stored.
    producer = client.create_producer(topic, producer_name="dedup-producer", batching_enabled=False)
    assert producer.last_sequence_id() == 9
    for sequence_id in range(5, 15):
        producer.send(f"m-{sequence_id}".encode(), sequence_id=sequence_id)
    producer.close()
    client.close()

    # The state survives a crash: rebuilt from the snapshot and the entries after it.
    own_magnetar.kill9()
    own_magnetar.start()
    client = make_client(own_magnetar)
    producer = client.create_producer(topic, producer_name="dedup-producer", batching_enabled=False)
    assert producer.last_sequence_id() == 14
    for sequence_id in range(12, 17):
        producer.send(f"m-{sequence_id}".encode(), sequence_id=sequence_id)
    producer.close()

    consumer = client.subscribe(topic, "sub", initial_position=pulsar.InitialPosition.Earliest)
    received = []
    for _ in range(17):
        message = consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
        received.append(message.data().decode())
        consumer.acknowledge(message)
    assert received == [f"m-{i}" for i in range(17)]
    expect_no_message(consumer)

    # Turned off, the same resend is stored again: the check above really was dedup's doing.
    assert http(own_magnetar, "POST", "/admin/v2/namespaces/public/default/deduplication", "false")[0] == 204
    producer = client.create_producer(topic, producer_name="dedup-producer", batching_enabled=False)
    assert producer.last_sequence_id() == -1
    producer.send(b"m-3-again", sequence_id=3)
    producer.close()
    assert consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS).data() == b"m-3-again"
    consumer.close()
    client.close()


def test_failover_on_a_partitioned_topic_gives_each_partition_one_active_consumer(
    magnetar: MagnetarProcess, client: pulsar.Client
) -> None:
    local = unique_name("py-parts-failover")
    topic = f"persistent://public/default/{local}"
    assert http(magnetar, "PUT", f"/admin/v2/persistent/public/default/{local}/partitions", "2")[0] == 204
    consumers = [
        client.subscribe(
            topic,
            "failover",
            consumer_type=pulsar.ConsumerType.Failover,
            consumer_name=f"consumer-{i}",
            initial_position=pulsar.InitialPosition.Earliest,
        )
        for i in range(2)
    ]
    producer = client.create_producer(
        topic, batching_enabled=False, message_routing_mode=pulsar.PartitionsRoutingMode.RoundRobinDistribution
    )
    for i in range(40):
        producer.send(f"fo-{i}".encode())

    # Pulsar's choice: consumers sorted by name, partition i -> consumer i mod 2. Each consumer
    # gets exactly one partition, in order within it.
    seen: dict[str, list[int]] = {}
    for index, consumer in enumerate(consumers):
        partitions = set()
        for _ in range(20):
            message = consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
            partitions.add(message.topic_name())
            seen.setdefault(message.topic_name(), []).append(int(message.data().decode().split("-")[1]))
            consumer.acknowledge(message)
        assert partitions == {f"{topic}-partition-{index}"}, (index, partitions)
        expect_no_message(consumer)
    assert sorted(n for numbers in seen.values() for n in numbers) == list(range(40))
    for numbers in seen.values():
        assert numbers == sorted(numbers), "order within a partition"
    producer.close()
    for consumer in consumers:
        consumer.close()
