"""Multi-tenancy with the official Python client against a real `magnetar standalone`:
tenants and namespaces created over REST in Pulsar's paths and JSON shapes, and every
namespace or topic policy observed working from a client's side (limits refuse, quotas
refuse or hold, TTL expires, rates throttle, auto-creation off refuses an unknown topic).

The broker here checks backlog quotas, message TTL and inactive topics every second (its
settings file), so a test waits seconds, not minutes (subscription expiration counts in
minutes, as Pulsar's policy does: that test waits one).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import pulsar
import pytest

from conftest import _track
from magnetar_process import MagnetarProcess, magnetar_bin, make_client

SETTINGS = """
backlog_quota_check_interval_in_seconds = 1
message_expiry_check_interval_in_seconds = 1
broker_delete_inactive_topics_frequency_seconds = 1
"""


def http(node: MagnetarProcess, method: str, path: str, body: Any = None, raw: str | None = None) -> tuple[int, Any]:
    """One admin call: (status, parsed JSON body or None)."""
    data = raw.encode() if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(
        node.http_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            text = answer.read()
            return answer.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as error:
        text = error.read()
        return error.code, (json.loads(text) if text else None)


def ok(node: MagnetarProcess, method: str, path: str, body: Any = None, raw: str | None = None) -> Any:
    status, answer = http(node, method, path, body, raw)
    assert status in (200, 204), f"{method} {path}: {status} {answer}"
    return answer


@pytest.fixture(scope="module")
def _tenancy_node() -> Iterator[MagnetarProcess]:
    with tempfile.TemporaryDirectory(prefix="magnetar-tenancy-") as workdir:
        config = Path(workdir) / "broker.toml"
        config.write_text(SETTINGS)
        node = MagnetarProcess(magnetar_bin(), Path(workdir), "tenancy", ["--config", str(config)])
        try:
            node.start()
            yield node
        finally:
            node.stop()


@pytest.fixture
def node(request: pytest.FixtureRequest, _tenancy_node: MagnetarProcess) -> MagnetarProcess:
    _track(request, _tenancy_node)
    return _tenancy_node


@pytest.fixture
def client(node: MagnetarProcess) -> Iterator[pulsar.Client]:
    client = make_client(node)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def namespace(node: MagnetarProcess) -> str:
    """A fresh tenant with one namespace of its own."""
    tenant = f"team-{uuid.uuid4().hex[:8]}"
    ok(node, "PUT", f"/admin/v2/tenants/{tenant}", {"adminRoles": ["ops"], "allowedClusters": ["standalone"]})
    ok(node, "PUT", f"/admin/v2/namespaces/{tenant}/app")
    return f"{tenant}/app"


def backlog(node: MagnetarProcess, topic: str, subscription: str) -> int:
    stats = ok(node, "GET", f"/admin/v2/persistent/{topic}/stats")
    return stats["subscriptions"][subscription]["msgBacklog"]


def test_tenants_and_namespaces_are_created_used_and_deleted_over_rest(
    node: MagnetarProcess, client: pulsar.Client
) -> None:
    tenant = f"acme-{uuid.uuid4().hex[:8]}"
    info = {"adminRoles": ["acme-admin"], "allowedClusters": ["standalone"]}
    ok(node, "PUT", f"/admin/v2/tenants/{tenant}", info)
    assert http(node, "PUT", f"/admin/v2/tenants/{tenant}", info)[0] == 409
    assert tenant in ok(node, "GET", "/admin/v2/tenants")
    assert ok(node, "GET", f"/admin/v2/tenants/{tenant}") == info
    assert http(node, "GET", "/admin/v2/tenants/nobody-here")[0] == 404

    ok(node, "PUT", f"/admin/v2/namespaces/{tenant}/orders", {"bundles": {"numBundles": 8}})
    ok(node, "PUT", f"/admin/v2/namespaces/{tenant}/billing")
    assert http(node, "PUT", f"/admin/v2/namespaces/{tenant}/billing")[0] == 409
    assert sorted(ok(node, "GET", f"/admin/v2/namespaces/{tenant}")) == [f"{tenant}/billing", f"{tenant}/orders"]
    policies = ok(node, "GET", f"/admin/v2/namespaces/{tenant}/orders")
    assert policies["bundles"]["numBundles"] == 8
    assert policies["replication_clusters"] == ["standalone"]

    topic = f"persistent://{tenant}/orders/placed"
    consumer = client.subscribe(topic, "audit", initial_position=pulsar.InitialPosition.Earliest)
    producer = client.create_producer(topic)
    for i in range(10):
        producer.send(f"order-{i}".encode())
    received = [consumer.receive(timeout_millis=10_000).data().decode() for _ in range(10)]
    assert received == [f"order-{i}" for i in range(10)]
    consumer.close()
    producer.close()
    assert topic in ok(node, "GET", f"/admin/v2/namespaces/{tenant}/orders/topics")

    # A namespace with topics is not deleted unless forced; forced, its topics go with it.
    status, answer = http(node, "DELETE", f"/admin/v2/namespaces/{tenant}/orders")
    assert status == 409, answer
    assert http(node, "DELETE", f"/admin/v2/tenants/{tenant}")[0] == 409, "a tenant with namespaces stays"
    ok(node, "DELETE", f"/admin/v2/namespaces/{tenant}/orders?force=true")
    assert http(node, "GET", f"/admin/v2/namespaces/{tenant}/orders")[0] == 404
    ok(node, "DELETE", f"/admin/v2/tenants/{tenant}?force=true")
    assert tenant not in ok(node, "GET", "/admin/v2/tenants")
    with pytest.raises(Exception):
        client.create_producer(topic)


def test_topics_are_created_grown_and_deleted_over_rest(node: MagnetarProcess, namespace: str) -> None:
    topic = f"{namespace}/explicit"
    ok(node, "PUT", f"/admin/v2/persistent/{topic}")
    assert http(node, "PUT", f"/admin/v2/persistent/{topic}")[0] == 409
    assert f"persistent://{topic}" in ok(node, "GET", f"/admin/v2/persistent/{namespace}")
    ok(node, "DELETE", f"/admin/v2/persistent/{topic}")
    assert http(node, "DELETE", f"/admin/v2/persistent/{topic}")[0] == 404

    partitioned = f"{namespace}/sharded"
    ok(node, "PUT", f"/admin/v2/persistent/{partitioned}/partitions", raw="2")
    ok(node, "POST", f"/admin/v2/persistent/{partitioned}/partitions", raw="4")
    assert ok(node, "GET", f"/admin/v2/persistent/{partitioned}/partitions") == {"partitions": 4}
    status, answer = http(node, "POST", f"/admin/v2/persistent/{partitioned}/partitions", raw="3")
    assert status == 409, f"partitions only grow: {status} {answer}"
    listed = ok(node, "GET", f"/admin/v2/namespaces/{namespace}/topics")
    assert f"persistent://{partitioned}-partition-3" in listed
    ok(node, "DELETE", f"/admin/v2/persistent/{partitioned}/partitions")
    assert ok(node, "GET", f"/admin/v2/persistent/{partitioned}/partitions") == {"partitions": 0}


def test_bad_bodies_get_400_with_a_reason_and_change_nothing(node: MagnetarProcess, namespace: str) -> None:
    before = ok(node, "GET", f"/admin/v2/namespaces/{namespace}")
    cases = [
        ("POST", f"/admin/v2/namespaces/{namespace}/messageTTL", "{not json"),
        ("POST", f"/admin/v2/namespaces/{namespace}/messageTTL", "-5"),
        ("POST", f"/admin/v2/namespaces/{namespace}/retention", '{"retentionTimeInMinutes": 10, "size": 1}'),
        ("POST", f"/admin/v2/namespaces/{namespace}/retention", '{"retentionTimeInMinutes": -7}'),
        ("POST", f"/admin/v2/namespaces/{namespace}/publishRate", '{"publishThrottlingRateInMsg": "fast"}'),
        ("POST", f"/admin/v2/namespaces/{namespace}/maxProducersPerTopic", "-1"),
        ("POST", f"/admin/v2/namespaces/{namespace}/backlogQuota", '{"limitSize": 10, "policy": "drop_it"}'),
        ("PUT", f"/admin/v2/namespaces/{namespace.split('/')[0]}/other", '{"message_ttl_in_second": 5}'),
        ("PUT", f"/admin/v2/tenants/t-{uuid.uuid4().hex[:6]}", '{"adminRoles": [], "allowedCluster": ["x"]}'),
    ]
    for method, path, body in cases:
        status, answer = http(node, method, path, raw=body)
        assert status == 400, f"{method} {path} {body}: {status} {answer}"
        assert answer and answer.get("reason"), f"{method} {path}: no reason in {answer}"
    assert ok(node, "GET", f"/admin/v2/namespaces/{namespace}") == before
    assert http(node, "GET", f"/admin/v2/namespaces/{namespace.split('/')[0]}/other")[0] == 404


def test_isolation_refuses_unknown_namespaces_and_clusters_a_tenant_does_not_allow(
    node: MagnetarProcess, client: pulsar.Client, namespace: str
) -> None:
    tenant = namespace.split("/")[0]
    with pytest.raises(Exception):
        client.create_producer(f"persistent://{tenant}/missing/t")
    # A tenant allowed only on another cluster: its namespace exists, nothing of it is served here.
    ok(node, "PUT", "/admin/v2/clusters/elsewhere", {"serviceUrl": "http://elsewhere:8080"})
    assert ok(node, "GET", "/admin/v2/clusters/elsewhere")["serviceUrl"] == "http://elsewhere:8080"
    foreign = f"foreign-{uuid.uuid4().hex[:6]}"
    ok(node, "PUT", f"/admin/v2/tenants/{foreign}", {"allowedClusters": ["elsewhere"]})
    status, answer = http(node, "PUT", f"/admin/v2/namespaces/{foreign}/ns")
    assert status == 412, f"this cluster is not the tenant's: {status} {answer}"
    ok(node, "PUT", f"/admin/v2/namespaces/{foreign}/ns", {"replication_clusters": ["elsewhere"]})
    with pytest.raises(Exception):
        client.create_producer(f"persistent://{foreign}/ns/t")
    status, _ = http(node, "DELETE", "/admin/v2/clusters/elsewhere")
    assert status == 412, "a cluster a tenant allows is not deleted"
    ok(node, "DELETE", f"/admin/v2/tenants/{foreign}?force=true")
    ok(node, "DELETE", "/admin/v2/clusters/elsewhere")


def test_max_producers_and_consumers_refuse_the_next_one(
    node: MagnetarProcess, client: pulsar.Client, namespace: str
) -> None:
    ok(node, "POST", f"/admin/v2/namespaces/{namespace}/maxProducersPerTopic", 1)
    ok(node, "POST", f"/admin/v2/namespaces/{namespace}/maxConsumersPerSubscription", 2)
    assert ok(node, "GET", f"/admin/v2/namespaces/{namespace}/maxProducersPerTopic") == 1
    topic = f"persistent://{namespace}/limited"
    first = client.create_producer(topic)
    with pytest.raises(Exception, match="(?i)busy|max producers"):
        client.create_producer(topic)
    first.close()
    client.create_producer(topic).close()

    shared = pulsar.ConsumerType.Shared
    consumers = [client.subscribe(topic, "workers", consumer_type=shared) for _ in range(2)]
    with pytest.raises(Exception, match="(?i)busy|max consumers"):
        client.subscribe(topic, "workers", consumer_type=shared)
    # A topic's own policy overrides its namespace's.
    ok(node, "POST", f"/admin/v2/persistent/{namespace}/limited/maxConsumersPerSubscription", 3)
    consumers.append(client.subscribe(topic, "workers", consumer_type=shared))
    ok(node, "DELETE", f"/admin/v2/persistent/{namespace}/limited/maxConsumersPerSubscription")
    assert ok(node, "GET", f"/admin/v2/persistent/{namespace}/limited/maxConsumersPerSubscription") is None
    for consumer in consumers:
        consumer.close()


def test_auto_topic_creation_off_refuses_an_unknown_topic(
    node: MagnetarProcess, client: pulsar.Client, namespace: str
) -> None:
    ok(node, "POST", f"/admin/v2/namespaces/{namespace}/autoTopicCreation", {"allowAutoTopicCreation": False})
    with pytest.raises(Exception, match="(?i)not found|topic"):
        client.create_producer(f"persistent://{namespace}/never-made")
    ok(node, "PUT", f"/admin/v2/persistent/{namespace}/made")
    client.create_producer(f"persistent://{namespace}/made").close()
    # Partitioned auto-creation: a new topic gets the default partition count.
    ok(
        node,
        "POST",
        f"/admin/v2/namespaces/{namespace}/autoTopicCreation",
        {"allowAutoTopicCreation": True, "topicType": "partitioned", "defaultNumPartitions": 3},
    )
    producer = client.create_producer(f"persistent://{namespace}/auto-partitioned")
    producer.send(b"x")
    producer.close()
    assert ok(node, "GET", f"/admin/v2/persistent/{namespace}/auto-partitioned/partitions") == {"partitions": 3}


def test_max_topics_per_namespace(node: MagnetarProcess, client: pulsar.Client, namespace: str) -> None:
    ok(node, "POST", f"/admin/v2/namespaces/{namespace}/maxTopicsPerNamespace", 2)
    for name in ("a", "b"):
        client.create_producer(f"persistent://{namespace}/{name}").close()
    with pytest.raises(Exception):
        client.create_producer(f"persistent://{namespace}/c")
    assert http(node, "PUT", f"/admin/v2/persistent/{namespace}/c")[0] == 412


def test_backlog_quota_producer_exception_fails_the_next_send(
    node: MagnetarProcess, client: pulsar.Client, namespace: str
) -> None:
    quota = {"limitSize": 20_000, "policy": "producer_exception"}
    ok(node, "POST", f"/admin/v2/namespaces/{namespace}/backlogQuota", quota)
    assert ok(node, "GET", f"/admin/v2/namespaces/{namespace}/backlogQuotaMap")["destination_storage"] == quota
    topic = f"persistent://{namespace}/quota-exception"
    client.subscribe(topic, "slow").close()  # a durable subscription that keeps the backlog
    producer = client.create_producer(topic, batching_enabled=False, send_timeout_millis=10_000)
    sent = 0
    with pytest.raises(Exception, match="(?i)quota|blocked"):
        for _ in range(100):
            producer.send(b"x" * 1000)
            sent += 1
    assert 20 <= sent <= 30, f"{sent} sends of 1000 bytes got through a 20000-byte quota"
    with pytest.raises(Exception, match="(?i)quota|blocked"):
        client.create_producer(topic)


def test_backlog_quota_producer_request_hold_waits_for_consumers(
    node: MagnetarProcess, client: pulsar.Client, namespace: str
) -> None:
    ok(node, "POST", f"/admin/v2/namespaces/{namespace}/backlogQuota", {"limitSize": 10_000, "policy": "producer_request_hold"})
    topic = f"persistent://{namespace}/quota-hold"
    consumer = client.subscribe(topic, "slow")
    producer = client.create_producer(topic, batching_enabled=False, send_timeout_millis=60_000)
    # Ten entries of a little over 1000 bytes pass 10000 with the last one.
    for _ in range(10):
        producer.send(b"y" * 1000)
    done = threading.Event()
    results: list[Any] = []

    def on_sent(result, _message_id) -> None:
        results.append(result)
        done.set()

    producer.send_async(b"held", on_sent)
    assert not done.wait(3), "the send over the quota is held"
    for _ in range(10):
        consumer.acknowledge(consumer.receive(timeout_millis=10_000))
    assert done.wait(20), "acknowledging the backlog released the held send"
    assert results == [pulsar.Result.Ok]
    assert consumer.receive(timeout_millis=10_000).data() == b"held"


def test_message_ttl_expires_the_backlog_of_every_subscription(
    node: MagnetarProcess, client: pulsar.Client, namespace: str
) -> None:
    ok(node, "POST", f"/admin/v2/namespaces/{namespace}/messageTTL", 2)
    assert ok(node, "GET", f"/admin/v2/namespaces/{namespace}/messageTTL") == 2
    topic = f"persistent://{namespace}/expiring"
    for name in ("one", "two"):
        client.subscribe(topic, name).close()
    producer = client.create_producer(topic)
    for i in range(10):
        producer.send(f"m{i}".encode())
    assert backlog(node, topic.removeprefix("persistent://"), "one") == 10
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        stats = [backlog(node, topic.removeprefix("persistent://"), name) for name in ("one", "two")]
        if stats == [0, 0]:
            break
        time.sleep(0.5)
    assert stats == [0, 0], f"backlogs after the TTL: {stats}"
    consumer = client.subscribe(topic, "one")
    with pytest.raises(Exception):
        consumer.receive(timeout_millis=1000)
    producer.send(b"fresh")
    assert consumer.receive(timeout_millis=10_000).data() == b"fresh"


def test_a_publish_rate_keeps_the_producer_under_it(
    node: MagnetarProcess, client: pulsar.Client, namespace: str
) -> None:
    topic = f"{namespace}/throttled"
    ok(node, "PUT", f"/admin/v2/persistent/{topic}")
    rate = {"publishThrottlingRateInMsg": 100, "publishThrottlingRateInByte": -1}
    ok(node, "POST", f"/admin/v2/persistent/{topic}/publishRate", rate)
    assert ok(node, "GET", f"/admin/v2/persistent/{topic}/publishRate") == rate
    producer = client.create_producer(f"persistent://{topic}", batching_enabled=False)
    count = 400
    done = threading.Semaphore(0)
    start = time.monotonic()
    for i in range(count):
        producer.send_async(f"{i}".encode(), lambda *_: done.release())
    for _ in range(count):
        assert done.acquire(timeout=60)
    took = time.monotonic() - start
    # At most 10% over the rate: 400 messages at 100/s take at least 400 / 110 s.
    assert took >= count / 110, f"{count} messages in {took:.2f}s: faster than 100/s + 10%"


def test_policies_survive_a_restart(own_magnetar: MagnetarProcess) -> None:
    node = own_magnetar
    ok(node, "PUT", "/admin/v2/tenants/durable", {"allowedClusters": ["standalone"]})
    ok(node, "PUT", "/admin/v2/namespaces/durable/ns")
    ok(node, "POST", "/admin/v2/namespaces/durable/ns/maxProducersPerTopic", 1)
    ok(node, "PUT", "/admin/v2/persistent/durable/ns/t")
    ok(node, "POST", "/admin/v2/persistent/durable/ns/t/messageTTL?messageTTL=120")
    node.stop()
    node.start()
    assert ok(node, "GET", "/admin/v2/namespaces/durable/ns/maxProducersPerTopic") == 1
    assert ok(node, "GET", "/admin/v2/persistent/durable/ns/t/messageTTL") == 120
    client = make_client(node)
    try:
        client.create_producer("persistent://durable/ns/t")
        with pytest.raises(Exception, match="(?i)busy|max producers"):
            client.create_producer("persistent://durable/ns/t")
    finally:
        client.close()


def test_pulsar_standalone_conf_is_read_as_it_is(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    conf = tmp_path / "standalone.conf"
    conf.write_text(
        "# Apache Pulsar standalone.conf, as shipped (excerpt)\n"
        "clusterName=standalone\n"
        "zookeeperServers=\n"
        "metadataStoreUrl=\n"
        "managedLedgerDefaultEnsembleSize=1\n"
        "bookkeeperClientTimeoutInSeconds=30\n"
        "allowAutoTopicCreation=false\n"
        "maxProducersPerTopic=1\n"
    )
    node = MagnetarProcess(magnetar_bin(), tmp_path, "conf", ["--config", str(conf)])
    _track(request, node)
    node.start()
    try:
        assert "bookkeeperClientTimeoutInSeconds" in node.log_tail(), "an unimplemented key is named in a warning"
        client = make_client(node)
        try:
            with pytest.raises(Exception):
                client.create_producer("persistent://public/default/not-auto-created")
            ok(node, "PUT", "/admin/v2/persistent/public/default/made")
            client.create_producer("persistent://public/default/made")
            with pytest.raises(Exception, match="(?i)busy|max producers"):
                client.create_producer("persistent://public/default/made")
        finally:
            client.close()
    finally:
        node.stop()
    bad = tmp_path / "bad.conf"
    bad.write_text("brokerServicePort=sixty-six\n")
    bad_node = MagnetarProcess(magnetar_bin(), tmp_path / "bad", "bad-conf", ["--config", str(bad)])
    with pytest.raises(BaseException):
        bad_node.start()
    assert "brokerServicePort" in bad_node.log_tail()


def test_max_unacked_messages_per_consumer_stops_delivery_until_acks(
    node: MagnetarProcess, client: pulsar.Client, namespace: str
) -> None:
    ok(node, "POST", f"/admin/v2/namespaces/{namespace}/maxUnackedMessagesPerConsumer", 4)
    topic = f"persistent://{namespace}/unacked"
    consumer = client.subscribe(topic, "shared", consumer_type=pulsar.ConsumerType.Shared)
    producer = client.create_producer(topic, batching_enabled=False)
    for i in range(10):
        producer.send(f"{i}".encode())
    held = [consumer.receive(timeout_millis=10_000) for _ in range(4)]
    with pytest.raises(Exception):
        consumer.receive(timeout_millis=1500)
    for message in held[:2]:
        consumer.acknowledge(message)
    more = consumer.receive(timeout_millis=10_000)
    assert more.data().decode() not in {m.data().decode() for m in held}


def test_a_dispatch_rate_keeps_delivery_under_it(node: MagnetarProcess, client: pulsar.Client, namespace: str) -> None:
    topic = f"{namespace}/dispatch-throttled"
    ok(node, "PUT", f"/admin/v2/persistent/{topic}")
    client.subscribe(f"persistent://{topic}", "reader").close()
    producer = client.create_producer(f"persistent://{topic}", batching_enabled=False)
    count = 150
    for i in range(count):
        producer.send_async(f"{i}".encode(), None)
    producer.flush()
    rate = {"dispatchThrottlingRateInMsg": 50, "dispatchThrottlingRateInByte": -1, "ratePeriodInSecond": 1}
    ok(node, "POST", f"/admin/v2/persistent/{topic}/dispatchRate", rate)
    consumer = client.subscribe(f"persistent://{topic}", "reader")
    start = time.monotonic()
    for _ in range(count):
        consumer.acknowledge(consumer.receive(timeout_millis=20_000))
    took = time.monotonic() - start
    # Within 10% of 50/s: 150 messages take at least 150 / 55 s.
    assert took >= count / 55, f"{count} messages delivered in {took:.2f}s: faster than 50/s + 10%"


def test_an_inactive_topic_is_deleted(node: MagnetarProcess, client: pulsar.Client, namespace: str) -> None:
    policy = {"inactiveTopicDeleteMode": "delete_when_no_subscriptions", "maxInactiveDurationSeconds": 2, "deleteWhileInactive": True}
    ok(node, "POST", f"/admin/v2/namespaces/{namespace}/inactiveTopicPolicies", policy)
    idle = f"persistent://{namespace}/idle"
    kept = f"persistent://{namespace}/subscribed"
    for topic in (idle, kept):
        producer = client.create_producer(topic)
        producer.send(b"x")
        producer.close()
    client.subscribe(kept, "keeps-it").close()
    deadline = time.monotonic() + 20
    while idle in ok(node, "GET", f"/admin/v2/namespaces/{namespace}/topics") and time.monotonic() < deadline:
        time.sleep(0.5)
    topics = ok(node, "GET", f"/admin/v2/namespaces/{namespace}/topics")
    assert idle not in topics, f"the idle topic was deleted: {topics}"
    assert kept in topics, "a topic with a subscription stays (delete_when_no_subscriptions)"


def test_a_subscription_without_consumers_expires(node: MagnetarProcess, client: pulsar.Client, namespace: str) -> None:
    ok(node, "POST", f"/admin/v2/namespaces/{namespace}/subscriptionExpirationTime", 1)
    topic = f"persistent://{namespace}/expiring-subs"
    client.subscribe(topic, "abandoned").close()
    active = client.subscribe(topic, "active")
    path = topic.removeprefix("persistent://")
    deadline = time.monotonic() + 90
    while "abandoned" in ok(node, "GET", f"/admin/v2/persistent/{path}/stats")["subscriptions"]:
        assert time.monotonic() < deadline, "the abandoned subscription did not expire in 90 s"
        time.sleep(1)
    assert "active" in ok(node, "GET", f"/admin/v2/persistent/{path}/stats")["subscriptions"]
    active.close()


def test_backlog_quota_consumer_backlog_eviction_drops_the_oldest(
    node: MagnetarProcess, client: pulsar.Client, namespace: str
) -> None:
    quota = {"limitSize": 5_000, "policy": "consumer_backlog_eviction"}
    ok(node, "POST", f"/admin/v2/namespaces/{namespace}/backlogQuota", quota)
    topic = f"persistent://{namespace}/evicting"
    client.subscribe(topic, "slow").close()
    producer = client.create_producer(topic, batching_enabled=False)
    for i in range(20):
        producer.send(f"{i:04d}".encode() * 250)  # 1000 bytes each
    path = topic.removeprefix("persistent://")
    deadline = time.monotonic() + 15
    while backlog(node, path, "slow") > 5 and time.monotonic() < deadline:
        time.sleep(0.5)
    left = backlog(node, path, "slow")
    assert 0 < left <= 5, f"backlog after eviction: {left}"
    consumer = client.subscribe(topic, "slow")
    first = consumer.receive(timeout_millis=10_000).data()
    assert first.startswith(f"{20 - left:04d}".encode()), "the oldest messages went, the newest stay"

