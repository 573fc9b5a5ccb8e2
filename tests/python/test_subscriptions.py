"""Subscription types and delivery semantics with the real Apache Pulsar Python client.

Shared, Failover and Key_Shared subscriptions, negative acks with a dead-letter policy, ack
timeouts, batch-index acks, seek by message id and by time, readers, delayed delivery and
unsubscribe, each against a real `magnetar standalone` process. Every test checks what the
client received, so a broker that loses, duplicates, reorders or misroutes a message fails.
"""

from __future__ import annotations

import datetime
import json
import time
import urllib.request
import uuid

import pulsar
import pytest

from magnetar_process import MagnetarProcess

RECEIVE_TIMEOUT_MS = 10_000
QUIET_RECEIVE_TIMEOUT_MS = 1_000


def unique_topic(prefix: str) -> str:
    return f"persistent://public/default/{prefix}-{uuid.uuid4().hex[:10]}"


def expect_no_message(consumer, timeout_ms: int = QUIET_RECEIVE_TIMEOUT_MS) -> None:
    try:
        message = consumer.receive(timeout_millis=timeout_ms)
    except pulsar.Timeout:
        return
    pytest.fail(f"unexpected message {message.data()!r} (id {message.message_id()})")


def produce(client: pulsar.Client, topic: str, count: int, prefix: str = "m", **send_args) -> list:
    producer = client.create_producer(topic, batching_enabled=False)
    ids = [producer.send(f"{prefix}-{i}".encode(), **send_args) for i in range(count)]
    producer.close()
    return ids


def subscriptions_of(magnetar: MagnetarProcess, topic: str) -> set[str]:
    """The topic's durable subscriptions (stats also show open readers', as Pulsar's do)."""
    path = topic.removeprefix("persistent://")
    with urllib.request.urlopen(f"{magnetar.http_url}/admin/v2/persistent/{path}/stats", timeout=10) as reply:
        subscriptions = json.loads(reply.read())["subscriptions"]
        return {name for name, sub in subscriptions.items() if sub["isDurable"]}


def test_shared_consumers_share_every_message_once(client: pulsar.Client) -> None:
    topic = unique_topic("py-shared")
    consumers = [
        client.subscribe(
            topic,
            "shared-sub",
            consumer_type=pulsar.ConsumerType.Shared,
            consumer_name=f"c{i}",
            receiver_queue_size=10,
        )
        for i in range(2)
    ]
    produce(client, topic, 200)
    received: dict[int, list[str]] = {0: [], 1: []}
    idle_rounds = 0
    while sum(len(r) for r in received.values()) < 200 and idle_rounds < 20:
        progressed = False
        for index, consumer in enumerate(consumers):
            try:
                message = consumer.receive(timeout_millis=200)
            except pulsar.Timeout:
                continue
            received[index].append(message.data().decode())
            consumer.acknowledge(message)
            progressed = True
        idle_rounds = 0 if progressed else idle_rounds + 1
    everything = received[0] + received[1]
    assert sorted(everything) == sorted(f"m-{i}" for i in range(200)), "each message exactly once"
    assert received[0] and received[1], f"both consumers got messages: {len(received[0])}/{len(received[1])}"
    for consumer in consumers:
        consumer.close()
    # Everything was acknowledged: a new consumer of the subscription gets nothing.
    again = client.subscribe(topic, "shared-sub", consumer_type=pulsar.ConsumerType.Shared)
    expect_no_message(again)
    again.close()


def test_shared_consumer_closing_hands_its_unacknowledged_messages_to_the_other(client: pulsar.Client) -> None:
    topic = unique_topic("py-shared-close")
    leaving = client.subscribe(
        topic, "sc", consumer_type=pulsar.ConsumerType.Shared, consumer_name="leaving", receiver_queue_size=10
    )
    produce(client, topic, 20)
    # The only consumer so far: it holds up to its queue size, acknowledging none.
    held = [leaving.receive(timeout_millis=RECEIVE_TIMEOUT_MS).data().decode() for _ in range(5)]
    staying = client.subscribe(
        topic, "sc", consumer_type=pulsar.ConsumerType.Shared, consumer_name="staying", receiver_queue_size=10
    )
    leaving.close()
    got = []
    while len(got) < 20:
        message = staying.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
        got.append(message.data().decode())
        staying.acknowledge(message)
    assert sorted(got) == sorted(f"m-{i}" for i in range(20)), "nothing the leaving consumer held is lost"
    assert set(held) <= set(got)
    expect_no_message(staying)
    staying.close()


def test_failover_active_consumer_gets_all_and_the_other_takes_over(client: pulsar.Client) -> None:
    topic = unique_topic("py-failover")
    first = client.subscribe(topic, "fo", consumer_type=pulsar.ConsumerType.Failover, consumer_name="first")
    second = client.subscribe(topic, "fo", consumer_type=pulsar.ConsumerType.Failover, consumer_name="second")
    produce(client, topic, 100)
    for i in range(50):
        message = first.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
        assert message.data().decode() == f"m-{i}"
        first.acknowledge(message)
    # The standby consumer gets nothing while the active one is connected.
    expect_no_message(second)
    first.close()
    taken_over = []
    for _ in range(50):
        message = second.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
        taken_over.append(message.data().decode())
        second.acknowledge(message)
    assert taken_over == [f"m-{i}" for i in range(50, 100)], "the rest, in order, nothing lost or repeated"
    expect_no_message(second)
    second.close()


@pytest.mark.parametrize("key_batches", [False, True], ids=["unbatched", "key-based-batches"])
def test_key_shared_keeps_each_key_on_one_consumer_in_order(client: pulsar.Client, key_batches: bool) -> None:
    topic = unique_topic("py-key-shared")
    consumers = [
        client.subscribe(
            topic,
            "ks",
            consumer_type=pulsar.ConsumerType.KeyShared,
            consumer_name=f"ks-{i}",
            receiver_queue_size=20,
        )
        for i in range(3)
    ]
    if key_batches:
        # Batch entries of one key each: the broker routes by the first message's key.
        producer = client.create_producer(
            topic, batching_enabled=True, batching_type=pulsar.BatchingType.KeyBased, batching_max_publish_delay_ms=50
        )
    else:
        producer = client.create_producer(topic, batching_enabled=False)
    keys = [f"key-{k}" for k in range(12)]
    for i in range(25):
        for key in keys:
            producer.send_async(f"{key}:{i}".encode(), None, partition_key=key)
    producer.flush()
    producer.close()
    per_consumer: dict[int, list[tuple[str, int]]] = {0: [], 1: [], 2: []}
    idle_rounds = 0
    while sum(len(r) for r in per_consumer.values()) < 300 and idle_rounds < 100:
        progressed = False
        for index, consumer in enumerate(consumers):
            # Drain what this consumer has now, then go on to the next.
            while True:
                try:
                    message = consumer.receive(timeout_millis=50)
                except pulsar.Timeout:
                    break
                key, sequence = message.data().decode().split(":")
                assert message.partition_key() == key
                per_consumer[index].append((key, int(sequence)))
                consumer.acknowledge(message)
                progressed = True
        idle_rounds = 0 if progressed else idle_rounds + 1
    assert sum(len(r) for r in per_consumer.values()) == 300
    owner: dict[str, int] = {}
    for index, messages in per_consumer.items():
        for key, _ in messages:
            assert owner.setdefault(key, index) == index, f"{key} went to consumers {owner[key]} and {index}"
        for key in keys:
            sequences = [s for k, s in messages if k == key]
            assert sequences == sorted(sequences), f"{key} out of order on consumer {index}: {sequences}"
    for key in keys:
        assert sum(1 for m in per_consumer[owner[key]] if m[0] == key) == 25
    assert len(set(owner.values())) >= 2, f"keys spread over consumers: {owner}"
    for consumer in consumers:
        consumer.close()


def test_key_shared_consumer_joining_gets_moved_keys_only_after_earlier_messages_are_acked(
    client: pulsar.Client,
) -> None:
    topic = unique_topic("py-key-shared-join")
    first = client.subscribe(
        topic, "ksj", consumer_type=pulsar.ConsumerType.KeyShared, consumer_name="first", receiver_queue_size=100
    )
    producer = client.create_producer(topic, batching_enabled=False)
    keys = [f"key-{k}" for k in range(16)]
    for key in keys:
        producer.send(f"{key}:0".encode(), partition_key=key)
    held = [first.receive(timeout_millis=RECEIVE_TIMEOUT_MS) for _ in keys]
    # A second consumer joins while the first holds one unacknowledged message of every key.
    second = client.subscribe(
        topic, "ksj", consumer_type=pulsar.ConsumerType.KeyShared, consumer_name="second", receiver_queue_size=100
    )
    for key in keys:
        producer.send(f"{key}:1".encode(), partition_key=key)
    producer.close()
    # Keys that move to the second consumer must not overtake their sequence 0.
    expect_no_message(second, 2_000)
    received_first = []
    while True:
        try:
            message = first.receive(timeout_millis=QUIET_RECEIVE_TIMEOUT_MS)
        except pulsar.Timeout:
            break
        received_first.append(message.data().decode())
        first.acknowledge(message)
    for message in held:
        first.acknowledge(message)
    received_second = []
    for _ in range(len(keys) - len(received_first)):
        message = second.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
        received_second.append(message.data().decode())
        second.acknowledge(message)
    assert received_second, "some keys moved to the joining consumer"
    assert sorted(received_first + received_second) == sorted(f"{key}:1" for key in keys)
    expect_no_message(second)
    first.close()
    second.close()


def test_key_shared_consumer_without_permits_does_not_stall_other_keys(client: pulsar.Client) -> None:
    topic = unique_topic("py-key-shared-stall")
    slow = client.subscribe(
        topic, "kss", consumer_type=pulsar.ConsumerType.KeyShared, consumer_name="slow", receiver_queue_size=5
    )
    fast = client.subscribe(
        topic, "kss", consumer_type=pulsar.ConsumerType.KeyShared, consumer_name="fast", receiver_queue_size=5
    )
    producer = client.create_producer(topic, batching_enabled=False)
    keys = [f"key-{k}" for k in range(20)]
    for i in range(10):
        for key in keys:
            producer.send(f"{key}:{i}".encode(), partition_key=key)
    producer.close()

    def drain(consumer) -> list[tuple[str, int]]:
        got = []
        while True:
            try:
                message = consumer.receive(timeout_millis=QUIET_RECEIVE_TIMEOUT_MS)
            except pulsar.Timeout:
                return got
            key, sequence = message.data().decode().split(":")
            got.append((key, int(sequence)))
            consumer.acknowledge(message)

    # The slow consumer's queue is full and it does not receive: the fast one still gets
    # every message of its own keys, in order.
    fast_got = drain(fast)
    slow_got = drain(slow)
    assert len(fast_got) + len(slow_got) == 200
    fast_keys = {key for key, _ in fast_got}
    assert fast_keys and not fast_keys & {key for key, _ in slow_got}
    for key in fast_keys:
        assert [s for k, s in fast_got if k == key] == list(range(10)), key
    slow.close()
    fast.close()


def test_negative_ack_redelivers_then_dead_letter_topic_gets_the_message(client: pulsar.Client) -> None:
    topic = unique_topic("py-nack")
    dlq = f"{topic}-dlq"
    dlq_consumer = client.subscribe(dlq, "dlq-reader", initial_position=pulsar.InitialPosition.Earliest)
    consumer = client.subscribe(
        topic,
        "nack-sub",
        consumer_type=pulsar.ConsumerType.Shared,
        negative_ack_redelivery_delay_ms=200,
        dead_letter_policy=pulsar.ConsumerDeadLetterPolicy(max_redeliver_count=2, dead_letter_topic=dlq),
    )
    produce(client, topic, 2, prefix="n")
    counts: dict[str, list[int]] = {}
    for _ in range(4):
        message = consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
        body = message.data().decode()
        counts.setdefault(body, []).append(message.redelivery_count())
        if body == "n-0":
            consumer.negative_acknowledge(message)
        else:
            consumer.acknowledge(message)
    # n-0 came three times with rising redelivery counts; n-1 once.
    assert counts["n-0"] == [0, 1, 2], counts
    assert counts["n-1"] == [0], counts
    dead = dlq_consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
    assert dead.data() == b"n-0"
    dlq_consumer.acknowledge(dead)
    expect_no_message(consumer)
    consumer.close()
    dlq_consumer.close()


@pytest.mark.parametrize(
    "consumer_type", [pulsar.ConsumerType.Shared, pulsar.ConsumerType.Exclusive], ids=["shared", "exclusive"]
)
def test_ack_timeout_redelivers_unacknowledged_messages(client: pulsar.Client, consumer_type) -> None:
    topic = unique_topic("py-ack-timeout")
    # 10 s is the client's minimum ack timeout. Shared sends the ids, Exclusive asks for all.
    consumer = client.subscribe(topic, "at", consumer_type=consumer_type, unacked_messages_timeout_ms=10_000)
    produce(client, topic, 3)
    first = [consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS) for _ in range(3)]
    consumer.acknowledge(first[1])
    again = consumer.receive(timeout_millis=30_000)
    second = consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
    redelivered = sorted([again.data().decode(), second.data().decode()])
    assert redelivered == ["m-0", "m-2"], redelivered
    assert again.redelivery_count() >= 1
    consumer.acknowledge(again)
    consumer.acknowledge(second)
    expect_no_message(consumer)
    consumer.close()


def test_batch_index_acks_redeliver_only_unacknowledged_indexes(client: pulsar.Client) -> None:
    topic = unique_topic("py-batch-index")
    consumer = client.subscribe(
        topic, "bi", consumer_type=pulsar.ConsumerType.Shared, batch_index_ack_enabled=True
    )
    producer = client.create_producer(
        topic, batching_enabled=True, batching_max_messages=10, batching_max_publish_delay_ms=1000
    )
    for i in range(10):
        producer.send_async(f"b-{i}".encode(), None)
    producer.flush()
    producer.close()
    messages = [consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS) for _ in range(10)]
    entries = {(m.message_id().ledger_id(), m.message_id().entry_id()) for m in messages}
    assert len(entries) == 1, f"the ten messages form one batch entry: {entries}"
    for message in messages:
        if int(message.data().decode().split("-")[1]) % 2 == 0:
            consumer.acknowledge(message)
    consumer.close()
    reopened = client.subscribe(
        topic, "bi", consumer_type=pulsar.ConsumerType.Shared, batch_index_ack_enabled=True
    )
    rest = []
    for _ in range(5):
        message = reopened.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
        rest.append(message.data().decode())
        reopened.acknowledge(message)
    assert sorted(rest) == [f"b-{i}" for i in (1, 3, 5, 7, 9)]
    expect_no_message(reopened)
    reopened.close()


def test_seek_by_message_id_and_by_time(client: pulsar.Client) -> None:
    topic = unique_topic("py-seek")
    consumer = client.subscribe(topic, "seek-sub", initial_position=pulsar.InitialPosition.Earliest)
    ids = produce(client, topic, 5, prefix="old")
    # A gap in publish times to seek into.
    time.sleep(0.5)
    boundary_ms = int(time.time() * 1000)
    time.sleep(0.5)
    produce(client, topic, 5, prefix="new")
    for _ in range(10):
        consumer.acknowledge(consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS))
    expect_no_message(consumer)

    # The broker delivers from the message itself (Pulsar's resetCursor); the C++ client then
    # drops messages up to the seek id (start message id not inclusive): old-3 comes first.
    consumer.seek(ids[2])
    after_id = [consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS).data().decode() for _ in range(7)]
    assert after_id == [f"old-{i}" for i in range(3, 5)] + [f"new-{i}" for i in range(5)]

    consumer.seek(boundary_ms)
    after_time = []
    for _ in range(5):
        message = consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
        after_time.append(message.data().decode())
        consumer.acknowledge(message)
    assert after_time == [f"new-{i}" for i in range(5)]
    expect_no_message(consumer)

    # A time past the end puts the subscription at the end.
    consumer.seek(int(time.time() * 1000) + 3_600_000)
    expect_no_message(consumer)
    produce(client, topic, 1, prefix="later")
    assert consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS).data() == b"later-0"
    consumer.close()


@pytest.mark.parametrize("inclusive", [False, True], ids=["exclusive", "inclusive"])
def test_reader_starts_at_a_message_id(client: pulsar.Client, magnetar: MagnetarProcess, inclusive: bool) -> None:
    topic = unique_topic("py-reader")
    ids = produce(client, topic, 10)
    reader = client.create_reader(topic, ids[4], start_message_id_inclusive=inclusive)
    first = 4 if inclusive else 5
    got = [reader.read_next(timeout_millis=RECEIVE_TIMEOUT_MS).data().decode() for _ in range(10 - first)]
    assert got == [f"m-{i}" for i in range(first, 10)]
    assert not reader.has_message_available()
    earliest = client.create_reader(topic, pulsar.MessageId.earliest)
    assert earliest.read_next(timeout_millis=RECEIVE_TIMEOUT_MS).data() == b"m-0"
    # Readers' subscriptions are not durable: no cursor is stored for them.
    assert subscriptions_of(magnetar, topic) == set()
    reader.close()
    earliest.close()


def test_delayed_delivery_on_shared_holds_the_message_until_its_time(client: pulsar.Client) -> None:
    topic = unique_topic("py-delayed")
    consumer = client.subscribe(topic, "delayed", consumer_type=pulsar.ConsumerType.Shared)
    producer = client.create_producer(topic, batching_enabled=False)
    sent_at = time.monotonic()
    producer.send(b"late", deliver_after=datetime.timedelta(seconds=3))
    producer.send(b"now")
    producer.close()
    first = consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
    assert first.data() == b"now"
    consumer.acknowledge(first)
    late = consumer.receive(timeout_millis=RECEIVE_TIMEOUT_MS)
    waited = time.monotonic() - sent_at
    assert late.data() == b"late"
    assert waited >= 2.5, f"delivered after {waited:.2f} s, before its time"
    consumer.acknowledge(late)
    consumer.close()


def test_unsubscribe_is_refused_while_others_are_connected(client: pulsar.Client, magnetar: MagnetarProcess) -> None:
    topic = unique_topic("py-unsubscribe")
    first = client.subscribe(topic, "gone", consumer_type=pulsar.ConsumerType.Shared)
    second = client.subscribe(topic, "gone", consumer_type=pulsar.ConsumerType.Shared)
    with pytest.raises(pulsar.PulsarException):
        first.unsubscribe()
    assert "gone" in subscriptions_of(magnetar, topic)
    second.close()
    first.unsubscribe()
    assert "gone" not in subscriptions_of(magnetar, topic)


def test_second_exclusive_consumer_and_other_type_get_consumer_busy(client: pulsar.Client) -> None:
    topic = unique_topic("py-busy")
    owner = client.subscribe(topic, "excl", consumer_type=pulsar.ConsumerType.Exclusive)
    with pytest.raises(pulsar.ConsumerBusy):
        client.subscribe(topic, "excl", consumer_type=pulsar.ConsumerType.Exclusive)
    with pytest.raises(pulsar.ConsumerBusy):
        client.subscribe(topic, "excl", consumer_type=pulsar.ConsumerType.Shared)
    # The owner is undisturbed.
    produce(client, topic, 1)
    assert owner.receive(timeout_millis=RECEIVE_TIMEOUT_MS).data() == b"m-0"
    owner.close()


def test_consumers_of_separate_clients_share_a_subscription(magnetar: MagnetarProcess) -> None:
    """Instances of an application each run their own client, and each client numbers its
    consumers from 0: the broker must tell consumers apart by connection, not by that id.
    Two clients subscribing to one Shared subscription at the same moment both attach."""
    import threading

    topic = unique_topic("py-instances")
    clients = [pulsar.Client(magnetar.service_url) for _ in range(2)]
    consumers: list = [None, None]
    errors: list = []

    def subscribe(index: int) -> None:
        try:
            consumers[index] = clients[index].subscribe(
                topic, "instances", consumer_type=pulsar.ConsumerType.Shared, consumer_name=f"instance-{index}"
            )
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(f"instance-{index}: {error}")

    try:
        threads = [threading.Thread(target=subscribe, args=(index,)) for index in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, f"a consumer was refused: {errors}"
        produce(clients[0], topic, 40)
        received = []
        for consumer in consumers:
            while True:
                try:
                    message = consumer.receive(timeout_millis=QUIET_RECEIVE_TIMEOUT_MS)
                except pulsar.Timeout:
                    break
                received.append(message.data().decode())
                consumer.acknowledge(message)
        assert sorted(received) == sorted(f"m-{i}" for i in range(40)), "each message exactly once"
    finally:
        for client in clients:
            client.close()
