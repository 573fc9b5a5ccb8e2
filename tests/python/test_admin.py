"""Operating a topic through the admin API, with the official Python client producing and
consuming: stats with exact values (publishers, subscriptions of their real types, consumers,
backlogs, counters), internal and partitioned stats, the subscription verbs (create at a
position, skip, clear, reset by time and by message id, expire, delete), reading messages
(peek, examine, by id, last id), the brokers' health, and /metrics as Prometheus' own parser
and promtool read it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable

import pulsar
import pytest
from prometheus_client.parser import text_string_to_metric_families

from magnetar_process import MagnetarProcess
from test_tenancy import http, ok

NAMESPACE = "public/default"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def admin_path(topic: str, rest: str = "") -> str:
    return f"/admin/v2/persistent/{NAMESPACE}/{topic}{rest}"


def raw_get(node: MagnetarProcess, path: str) -> tuple[int, dict[str, str], bytes]:
    """A GET answered with bytes (messages): (status, headers by lower-case name, body)."""
    try:
        with urllib.request.urlopen(node.http_url + path, timeout=30) as answer:
            return answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def eventually(check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """Polls `check` until it returns something truthy (acks reach the broker in batches)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: still {last!r} after {timeout}s")


def stats(node: MagnetarProcess, topic: str) -> dict[str, Any]:
    return ok(node, "GET", admin_path(topic, "/stats"))


def metrics(node: MagnetarProcess) -> str:
    with urllib.request.urlopen(node.http_url + "/metrics", timeout=10) as answer:
        return answer.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return found.value
    return None


def test_stats_show_three_publishers_and_two_subscriptions_exactly(
    magnetar: MagnetarProcess, client: pulsar.Client
) -> None:
    name = unique("stats")
    topic = f"persistent://{NAMESPACE}/{name}"
    exclusive = client.subscribe(topic, "ex", consumer_type=pulsar.ConsumerType.Exclusive, consumer_name="ex-1")
    shared = [
        client.subscribe(topic, "sh", consumer_type=pulsar.ConsumerType.Shared, consumer_name=f"sh-{i}",
                         negative_ack_redelivery_delay_ms=100)
        for i in (1, 2)
    ]
    producers = [client.create_producer(topic, producer_name=f"p{i}", batching_enabled=False) for i in (1, 2, 3)]
    for producer in producers:
        for i in range(10):
            producer.send(f"{producer.producer_name()}-{i}".encode().ljust(100, b"."))

    for _ in range(30):
        exclusive.acknowledge(exclusive.receive(timeout_millis=10_000))
    received = 0
    acked = 0
    held = []
    while received < 30:
        for consumer in shared:
            try:
                message = consumer.receive(timeout_millis=200)
            except pulsar.Timeout:
                continue
            received += 1
            if acked < 10:
                consumer.acknowledge(message)
                acked += 1
            else:
                held.append((consumer, message))

    def settled() -> dict[str, Any] | None:
        found = stats(magnetar, name)
        subs = found["subscriptions"]
        return found if subs["ex"]["msgBacklog"] == 0 and subs["sh"]["msgBacklog"] == 20 else None

    found = eventually(settled, "backlogs of ex (0) and sh (20)")
    assert sorted(p["producerName"] for p in found["publishers"]) == ["p1", "p2", "p3"]
    for publisher in found["publishers"]:
        assert publisher["accessMode"] == "Shared"
        assert publisher["msgInCounter"] == 10
        assert publisher["address"].startswith("127.0.0.1:")
        assert publisher["clientVersion"]
        assert publisher["connectedSince"].endswith("Z")
    assert found["msgInCounter"] == 30
    assert found["bytesInCounter"] >= 30 * 100
    assert found["msgRateIn"] > 0 and found["msgThroughputIn"] > found["msgRateIn"]
    assert found["msgOutCounter"] == 60
    assert found["storageSize"] >= found["bytesInCounter"]
    # Bytes after the slowest subscription (sh), not an entry count.
    assert found["backlogSize"] > 20

    ex, sh = found["subscriptions"]["ex"], found["subscriptions"]["sh"]
    assert ex["type"] == "Exclusive" and sh["type"] == "Shared"
    assert [c["consumerName"] for c in ex["consumers"]] == ["ex-1"]
    assert sorted(c["consumerName"] for c in sh["consumers"]) == ["sh-1", "sh-2"]
    assert ex["msgOutCounter"] == 30 and sh["msgOutCounter"] == 30
    assert ex["unackedMessages"] == 0
    assert sh["unackedMessages"] == 20
    assert sum(c["unackedMessages"] for c in sh["consumers"]) == 20
    assert sum(c["msgOutCounter"] for c in sh["consumers"]) == 30
    assert sh["backlogSize"] > 0 and ex["backlogSize"] == 0
    assert ex["activeConsumerName"] == "ex-1"

    # The same numbers in /metrics, labelled as Pulsar labels them.
    text = metrics(magnetar)
    labels = {"namespace": NAMESPACE, "topic": topic}
    assert sample(text, "pulsar_producers_count", **labels) == 3
    assert sample(text, "pulsar_consumers_count", **labels) == 3
    assert sample(text, "pulsar_subscription_back_log", subscription="sh", **labels) == 20
    assert sample(text, "pulsar_subscription_unacked_messages", subscription="sh", **labels) == 20
    assert sample(text, "pulsar_subscription_consumers_count", subscription="sh", **labels) == 2
    assert sample(text, "pulsar_msg_backlog", **labels) == 20
    assert sample(text, "pulsar_in_messages_total", **labels) == 30
    assert (sample(text, "pulsar_storage_backlog_size", **labels) or 0) > 0

    # Negative acks are redelivered and counted.
    # A negative ack is delivered again, and counted.
    nacked_by, nacked = held[0]
    nacked_by.negative_acknowledge(nacked)

    def redelivering() -> float | None:
        rate = stats(magnetar, name)["subscriptions"]["sh"]["msgRateRedeliver"]
        return rate if rate > 0 else None

    eventually(redelivering, "msgRateRedeliver of sh")
    for consumer in [exclusive, *shared]:
        consumer.close()
    for producer in producers:
        producer.close()
    after = stats(magnetar, name)
    assert after["publishers"] == []
    assert after["subscriptions"]["sh"]["consumers"] == []
    assert after["subscriptions"]["sh"]["msgBacklog"] == 20


def test_metrics_pass_promtool(magnetar: MagnetarProcess, client: pulsar.Client) -> None:
    topic = f"persistent://{NAMESPACE}/{unique('promtool')}"
    producer = client.create_producer(topic)
    consumer = client.subscribe(topic, "s")
    producer.send(b"x")
    consumer.acknowledge(consumer.receive(timeout_millis=10_000))
    text = metrics(magnetar)
    families = {family.name for family in text_string_to_metric_families(text)}
    assert {"pulsar_rate_in", "pulsar_rate_out", "pulsar_throughput_in", "pulsar_storage_size",
            "pulsar_subscription_back_log", "pulsar_broker_topics_count"} <= families
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (deploy/test.sh installs Debian's prometheus)")
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    # Exit 1 is a parse error. Exit 3 is lint, and the only remarks allowed are about names
    # kept as Pulsar and BookKeeper spell them, so that dashboards written for them work: the
    # `_count` and `_sum` suffixes of Pulsar's gauges (pulsar_producers_count,
    # pulsar_entry_size_sum), the units in pulsar_entry_size_le_1_kb and its neighbours, and
    # BookKeeper's counters without `_total` (bookie_read_cache_hits, ...).
    remarks = [line for line in (checked.stdout + checked.stderr).splitlines() if line.strip()]
    assert checked.returncode in (0, 3), remarks
    bookkeeper_names = ("bookie_", "bookkeeper_", "replication_worker_", "auditor_")
    for remark in remarks:
        pulsar_count = remark.startswith(("pulsar_", "magnetar_")) and any(
            kind in remark for kind in ('should not have "_count" suffix', 'should not have "_sum" suffix',
                                        "pulsar_entry_size_le_")
        )
        bookkeeper_counter = remark.startswith(bookkeeper_names) and 'should have "_total" suffix' in remark
        assert pulsar_count or bookkeeper_counter, remarks
    producer.close()
    consumer.close()


def test_subscription_verbs_and_messages(magnetar: MagnetarProcess, client: pulsar.Client) -> None:
    name = unique("subverbs")
    topic = f"persistent://{NAMESPACE}/{name}"
    producer = client.create_producer(topic, batching_enabled=False)
    ids = []
    for i in range(10):
        ids.append(producer.send(f"m{i}".encode(), properties={"index": str(i)}, partition_key=f"k{i}"))
        time.sleep(0.005)

    def backlog(sub: str) -> int:
        return stats(magnetar, name)["subscriptions"][sub]["msgBacklog"]

    ok(magnetar, "PUT", admin_path(name, "/subscription/admin-sub"), {"ledgerId": -1, "entryId": -1})
    assert "admin-sub" in ok(magnetar, "GET", admin_path(name, "/subscriptions"))
    assert backlog("admin-sub") == 10
    status, answer = http(magnetar, "PUT", admin_path(name, "/subscription/admin-sub"))
    assert status == 409, answer

    # Created at the latest message without a body: nothing in its backlog.
    ok(magnetar, "PUT", admin_path(name, "/subscription/from-latest"))
    assert backlog("from-latest") == 0

    status, headers, body = raw_get(magnetar, admin_path(name, "/subscription/admin-sub/position/1"))
    assert status == 200 and body == b"m0", (status, body)
    assert headers["x-pulsar-message-id"] == f"{ids[0].ledger_id()}:{ids[0].entry_id()}"
    assert headers["x-pulsar-property-index"] == "0"
    assert headers["x-pulsar-partition-key"] == "k0"
    assert int(headers["x-pulsar-publish-time"]) > 0

    ok(magnetar, "POST", admin_path(name, "/subscription/admin-sub/skip/3"))
    assert backlog("admin-sub") == 7
    assert raw_get(magnetar, admin_path(name, "/subscription/admin-sub/position/1"))[2] == b"m3"
    assert raw_get(magnetar, admin_path(name, "/subscription/admin-sub/position/7"))[2] == b"m9"
    assert raw_get(magnetar, admin_path(name, "/subscription/admin-sub/position/8"))[0] == 404

    target = ids[5]
    ok(magnetar, "POST", admin_path(name, "/subscription/admin-sub/resetcursor"),
       {"ledgerId": target.ledger_id(), "entryId": target.entry_id(), "partitionIndex": -1})
    assert backlog("admin-sub") == 5
    ok(magnetar, "POST", admin_path(name, "/subscription/admin-sub/resetcursor/0"))
    assert backlog("admin-sub") == 10

    # A consumer reads from where the admin API put the subscription.
    consumer = client.subscribe(topic, "admin-sub")
    assert consumer.receive(timeout_millis=10_000).data() == b"m0"
    consumer.close()

    ok(magnetar, "POST", admin_path(name, "/subscription/admin-sub/expireMessages/3600"))
    assert backlog("admin-sub") == 10
    time.sleep(1.1)
    ok(magnetar, "POST", admin_path(name, "/subscription/admin-sub/expireMessages/1"))
    assert backlog("admin-sub") == 0
    ok(magnetar, "POST", admin_path(name, "/subscription/admin-sub/resetcursor/0"))
    ok(magnetar, "POST", admin_path(name, "/subscription/admin-sub/skip_all"))
    assert backlog("admin-sub") == 0
    ok(magnetar, "POST", admin_path(name, "/subscription/admin-sub/resetcursor/0"))
    ok(magnetar, "POST", admin_path(name, "/all_subscription/expireMessages/0"))
    assert backlog("admin-sub") == 0

    # Namespace-wide clear backlog, for one subscription name.
    ok(magnetar, "POST", admin_path(name, "/subscription/admin-sub/resetcursor/0"))
    ok(magnetar, "POST", f"/admin/v2/namespaces/{NAMESPACE}/clearBacklog/admin-sub")
    assert backlog("admin-sub") == 0

    last = ok(magnetar, "GET", admin_path(name, "/lastMessageId"))
    assert (last["ledgerId"], last["entryId"]) == (ids[9].ledger_id(), ids[9].entry_id())
    by_id = raw_get(magnetar, admin_path(name, f"/ledger/{ids[4].ledger_id()}/entry/{ids[4].entry_id()}"))
    assert by_id[0] == 200 and by_id[2] == b"m4"
    assert raw_get(magnetar, admin_path(name, f"/ledger/{ids[4].ledger_id()}/entry/999999"))[0] == 404
    earliest = raw_get(magnetar, admin_path(name, "/examinemessage?initialPosition=earliest&messagePosition=2"))
    assert earliest[2] == b"m1"
    latest = raw_get(magnetar, admin_path(name, "/examinemessage?initialPosition=latest&messagePosition=1"))
    assert latest[2] == b"m9"

    internal = ok(magnetar, "GET", admin_path(name, "/internalStats"))
    assert sum(ledger["entries"] for ledger in internal["ledgers"]) == 10
    assert internal["numberOfEntries"] == 10
    assert internal["lastConfirmedEntry"] == f"{ids[9].ledger_id()}:{ids[9].entry_id()}"
    cursor = internal["cursors"]["admin-sub"]
    assert cursor["markDeletePosition"] == internal["lastConfirmedEntry"]
    assert cursor["individuallyDeletedMessages"] == "[]"

    ok(magnetar, "DELETE", admin_path(name, "/subscription/admin-sub"))
    assert "admin-sub" not in ok(magnetar, "GET", admin_path(name, "/subscriptions"))
    producer.close()


def test_individually_deleted_ranges_show_in_internal_stats(
    magnetar: MagnetarProcess, client: pulsar.Client
) -> None:
    name = unique("ranges")
    topic = f"persistent://{NAMESPACE}/{name}"
    consumer = client.subscribe(topic, "gaps", consumer_type=pulsar.ConsumerType.Shared)
    producer = client.create_producer(topic, batching_enabled=False)
    ids = [producer.send(f"m{i}".encode()) for i in range(6)]
    messages = [consumer.receive(timeout_millis=10_000) for _ in range(6)]
    for message in messages:
        if message.data() in (b"m2", b"m3", b"m5"):
            consumer.acknowledge(message)
    ledger = ids[0].ledger_id()

    def ranges() -> str | None:
        cursor = ok(magnetar, "GET", admin_path(name, "/internalStats"))["cursors"]["gaps"]
        expected = f"[({ledger}:{ids[1].entry_id()}..{ledger}:{ids[3].entry_id()}],({ledger}:{ids[4].entry_id()}..{ledger}:{ids[5].entry_id()}]]"
        return cursor["individuallyDeletedMessages"] if cursor["individuallyDeletedMessages"] == expected else None

    eventually(ranges, "individually deleted ranges")
    sub = stats(magnetar, name)["subscriptions"]["gaps"]
    assert sub["msgBacklog"] == 3 and sub["nonContiguousDeletedMessagesRanges"] == 2
    consumer.close()
    producer.close()


def test_partitioned_stats_sum_the_partitions(magnetar: MagnetarProcess, client: pulsar.Client) -> None:
    name = unique("pstats")
    ok(magnetar, "PUT", admin_path(name, "/partitions"), raw="3")
    topic = f"persistent://{NAMESPACE}/{name}"
    consumer = client.subscribe(topic, "all", consumer_type=pulsar.ConsumerType.Shared)
    producer = client.create_producer(topic, batching_enabled=False,
                                      message_routing_mode=pulsar.PartitionsRoutingMode.RoundRobinDistribution)
    for i in range(12):
        producer.send(f"m{i}".encode())
    found = ok(magnetar, "GET", admin_path(name, "/partitioned-stats"))
    assert found["metadata"] == {"partitions": 3}
    assert found["msgInCounter"] == 12
    assert sorted(found["partitions"]) == [f"{topic}-partition-{i}" for i in range(3)]
    assert sum(p["msgInCounter"] for p in found["partitions"].values()) == 12
    assert found["subscriptions"]["all"]["msgBacklog"] == 12
    assert len(found["publishers"]) == 3
    summed = ok(magnetar, "GET", admin_path(name, "/partitioned-stats?perPartition=false"))
    assert "partitions" not in summed and summed["msgInCounter"] == 12
    # A partitioned topic's own stats path names what to ask instead.
    status, answer = http(magnetar, "GET", admin_path(name, "/stats"))
    assert status == 404 and "partitioned" in answer["reason"]
    consumer.close()
    producer.close()


def test_storage_bookie_and_lookup_metrics_count_a_known_workload(
    magnetar: MagnetarProcess, client: pulsar.Client
) -> None:
    topic = f"persistent://{NAMESPACE}/{unique('hist')}"
    before = metrics(magnetar)
    bookie_adds = lambda text: sum(  # noqa: E731
        found.value
        for family in text_string_to_metric_families(text)
        for found in family.samples
        if found.name == "bookie_journal_JOURNAL_ADD_ENTRY_count"
    )
    lookups = lambda text: sample(text, "pulsar_broker_lookup_answers_total") or 0  # noqa: E731
    producer = client.create_producer(topic, batching_enabled=False)
    for i in range(20):
        producer.send(b"x" * (100 if i < 15 else 1500))
    after = metrics(magnetar)
    labels = {"namespace": NAMESPACE, "topic": topic}
    # Every entry in Pulsar's add latency and entry size buckets, each in the right one.
    assert sample(after, "pulsar_storage_write_latency_count", **labels) == 20
    latency = ["0_5", "1", "5", "10", "20", "50", "100", "200", "1000", "overflow"]
    assert sum(sample(after, f"pulsar_storage_write_latency_le_{b}", **labels) for b in latency) == 20
    assert sample(after, "pulsar_storage_write_latency_sum", **labels) > 0
    assert sample(after, "pulsar_entry_size_count", **labels) == 20
    sizes = {b: sample(after, f"pulsar_entry_size_le_{b}", **labels) for b in ["128", "512", "1_kb", "2_kb"]}
    # 15 entries of 100 bytes of payload plus metadata, 5 of 1500.
    assert sizes["128"] + sizes["512"] == 15 and sizes["2_kb"] == 5, sizes
    # The bookie's journal made every one durable; it is writable and sees its disk.
    assert bookie_adds(after) - bookie_adds(before) >= 20
    assert sample(after, "bookie_SERVER_STATUS") == 1
    totals = [f.value for fam in text_string_to_metric_families(after) for f in fam.samples
              if f.name == "bookie_ledger_dir_total_bytes"]
    assert totals and all(total > 0 for total in totals)
    assert sample(after, "bookie_journal_JOURNAL_SYNC_count") > 0
    # The producer's lookup was answered here.
    assert lookups(after) > lookups(before)
    producer.close()


def test_brokers_and_bookies(magnetar: MagnetarProcess) -> None:
    status, _, body = raw_get(magnetar, "/admin/v2/brokers/health")
    assert status == 200 and body == b"ok"
    status, _, body = raw_get(magnetar, "/admin/v2/brokers/ready")
    assert status == 200 and body == b"ok"
    bookies = ok(magnetar, "GET", "/admin/v2/bookies/all")["bookies"]
    assert len(bookies) >= 1 and all(":" in bookie["address"] for bookie in bookies)
    for bookie in bookies:
        assert bookie["state"] == "read-write" and bookie["readOnly"] is False, bookie
        assert bookie["totalSpace"] > bookie["freeSpace"] > 0, bookie
    brokers = ok(magnetar, "GET", "/admin/v2/brokers/standalone")
    leader = eventually(lambda: http(magnetar, "GET", "/admin/v2/brokers/leaderBroker")[1], "a leader")
    assert leader["brokerId"] in brokers


def test_bad_requests_get_4xx_with_a_reason(magnetar: MagnetarProcess, client: pulsar.Client) -> None:
    name = unique("bad")
    producer = client.create_producer(f"persistent://{NAMESPACE}/{name}")
    producer.send(b"x")
    ok(magnetar, "PUT", admin_path(name, "/subscription/s"))
    cases = [
        ("GET", admin_path(unique("never"), "/stats"), None, None, 404),
        ("GET", admin_path(unique("never"), "/internalStats"), None, None, 404),
        ("GET", "/admin/v2/persistent/nope/nope/t/stats", None, None, 404),
        ("POST", admin_path(name, "/subscription/s/skip/many"), None, None, 400),
        ("POST", admin_path(name, "/subscription/missing/skip/1"), None, None, 404),
        ("POST", admin_path(name, "/subscription/s/resetcursor/yesterday"), None, None, 400),
        ("POST", admin_path(name, "/subscription/s/resetcursor"), None, "{not json", 400),
        ("POST", admin_path(name, "/subscription/s/expireMessages/-1"), None, None, 400),
        ("GET", admin_path(name, "/subscription/s/position/0"), None, None, 400),
        ("GET", admin_path(name, "/examinemessage?initialPosition=middle&messagePosition=1"), None, None, 400),
        ("GET", admin_path(name, "/ledger/x/entry/1"), None, None, 400),
        ("DELETE", admin_path(name, "/subscription/missing"), None, None, 404),
        ("GET", admin_path(name, "/partitioned-stats"), None, None, 404),
    ]
    for method, path, body, raw, expected in cases:
        status, answer = http(magnetar, method, path, body, raw)
        assert status == expected, (method, path, status, answer)
        assert answer and answer.get("reason"), (method, path, answer)
    # A subscription with a consumer is not deleted unless forced.
    consumer = client.subscribe(f"persistent://{NAMESPACE}/{name}", "s")
    status, answer = http(magnetar, "DELETE", admin_path(name, "/subscription/s"))
    assert status == 412, answer
    ok(magnetar, "DELETE", admin_path(name, "/subscription/s?force=true"))
    producer.close()
    consumer.close()


def test_terminate_refuses_publishes_from_the_official_client(
    magnetar: MagnetarProcess, client: pulsar.Client
) -> None:
    name = unique("terminate")
    topic = f"persistent://{NAMESPACE}/{name}"
    consumer = client.subscribe(topic, "s")
    producer = client.create_producer(topic, batching_enabled=False)
    last_sent = [producer.send(f"m{i}".encode()) for i in range(3)][-1]
    answer = ok(magnetar, "POST", admin_path(name, "/terminate"))
    assert (answer["ledgerId"], answer["entryId"]) == (last_sent.ledger_id(), last_sent.entry_id())
    # The producer was told to reconnect (CLOSE_PRODUCER) and then refused as terminated, as
    # Pulsar does. Nothing on the connection makes this (C++) client drop it: the consumer
    # sharing it gets each message once, and no REACHED_END_OF_TOPIC, which the C++ client
    # takes for an invalid message.
    with pytest.raises(pulsar.TopicTerminated):
        producer.send(b"too late")
    with pytest.raises(pulsar.TopicTerminated):
        client.create_producer(topic)
    assert [consumer.receive(timeout_millis=10_000).data() for _ in range(3)] == [b"m0", b"m1", b"m2"]
    with pytest.raises(pulsar.Timeout):
        consumer.receive(timeout_millis=1_000)
    assert ok(magnetar, "GET", admin_path(name, "/lastMessageId")) == answer
    consumer.close()


DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "magnetar.json"
METRIC_NAME = re.compile(r"\b(?:pulsar|bookie|bookkeeper|replication_worker|auditor|magnetar)_[A-Za-z0-9_]*")


def test_grafana_dashboard_asks_for_metrics_that_exist(
    magnetar: MagnetarProcess, client: pulsar.Client, tmp_path: Path
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    variables = [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert len(exprs) > 30 and len(variables) == 3
    # A workload that makes every family appear: a topic with a producer and a subscription.
    topic = f"persistent://{NAMESPACE}/{unique('grafana')}"
    producer = client.create_producer(topic)
    consumer = client.subscribe(topic, "dash")
    producer.send(b"x")
    consumer.acknowledge(consumer.receive(timeout_millis=10_000))
    # Sample names, and family names: the parser reports a counter's samples with `_total`
    # added where the text (BookKeeper's counters) has none, as Prometheus stores them.
    families = list(text_string_to_metric_families(metrics(magnetar)))
    exposed = {s.name for family in families for s in family.samples} | {family.name for family in families}
    asked = {name for text in exprs + variables for name in METRIC_NAME.findall(text)}
    assert asked - exposed == set(), "the dashboard asks for metrics /metrics does not have"
    producer.close()
    consumer.close()
    # Every query parses as PromQL: promtool checks them as recording rules (JSON is YAML).
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (deploy/test.sh installs Debian's prometheus)")
    concrete = [re.sub(r"\$(cluster|namespace|bookie)", ".*", expr) for expr in exprs]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"magnetar:dashboard_query_{i}", "expr": expr} for i, expr in enumerate(concrete)
    ]}]}
    (tmp_path / "rules.yml").write_text(json.dumps(rules))
    checked = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_subscription_verbs_on_a_partitioned_topic_apply_to_every_partition(
    magnetar: MagnetarProcess, client: pulsar.Client
) -> None:
    name = unique("psubs")
    topic = f"persistent://{NAMESPACE}/{name}"
    assert http(magnetar, "PUT", admin_path(name, "/partitions"), 3)[0] == 204
    consumer = client.subscribe(topic, "s", consumer_type=pulsar.ConsumerType.Shared)
    producer = client.create_producer(topic, batching_enabled=False,
                                      message_routing_mode=pulsar.PartitionsRoutingMode.RoundRobinDistribution)
    for i in range(9):
        producer.send(f"m{i}".encode())
    consumer.close()

    def backlogs(sub: str) -> list[int]:
        stats = ok(magnetar, "GET", admin_path(name, "/partitioned-stats"))
        return [part["subscriptions"][sub]["msgBacklog"] for part in stats["partitions"].values()]

    assert ok(magnetar, "GET", admin_path(name, "/subscriptions")) == ["s"]
    assert sum(backlogs("s")) == 9 and all(b > 0 for b in backlogs("s"))
    assert http(magnetar, "POST", admin_path(name, "/subscription/s/skip_all"))[0] == 204
    assert backlogs("s") == [0, 0, 0]
    minute_ago = int(time.time() * 1000) - 60_000
    assert http(magnetar, "POST", admin_path(name, f"/subscription/s/resetcursor/{minute_ago}"))[0] == 204
    assert sum(backlogs("s")) == 9
    assert http(magnetar, "PUT", admin_path(name, "/subscription/new"))[0] == 204
    assert sorted(ok(magnetar, "GET", admin_path(name, "/subscriptions"))) == ["new", "s"]
    assert backlogs("new") == [0, 0, 0]
    assert http(magnetar, "POST", admin_path(name, "/all_subscription/expireMessages/0"))[0] == 204
    assert backlogs("s") == [0, 0, 0]
    assert http(magnetar, "DELETE", admin_path(name, "/subscription/new"))[0] == 204
    assert ok(magnetar, "GET", admin_path(name, "/subscriptions")) == ["s"]
    status, body = http(magnetar, "POST", admin_path(name, "/subscription/nope/skip_all"))
    assert status == 404 and "partition 0" in body["reason"], body
    producer.close()


def test_tailing_subscriptions_are_served_from_the_entry_cache(
    magnetar: MagnetarProcess, client: pulsar.Client
) -> None:
    """Two subscriptions tail a topic with Pulsar's client: every entry they get comes from the
    broker's entry cache (one write cached, read by both), as /metrics counts it."""
    topic = f"persistent://{NAMESPACE}/{unique('cache')}"
    hits = lambda text: sample(text, "pulsar_ml_cache_hits_total") or 0  # noqa: E731
    consumers = [client.subscribe(topic, f"tail-{i}", consumer_type=pulsar.ConsumerType.Exclusive) for i in (1, 2)]
    before = metrics(magnetar)
    producer = client.create_producer(topic, batching_enabled=False)
    sent = [f"cached-{i}".encode() for i in range(50)]
    for payload in sent:
        producer.send(payload)
    for consumer in consumers:
        received = []
        for _ in sent:
            message = consumer.receive(timeout_millis=10_000)
            received.append(message.data())
            consumer.acknowledge(message)
        assert received == sent
    after = metrics(magnetar)
    assert hits(after) - hits(before) >= 2 * len(sent), (hits(before), hits(after))
    for name in ("pulsar_ml_cache_used_size", "pulsar_ml_cache_misses_total", "pulsar_ml_cache_evictions_total"):
        assert sample(after, name) is not None, name
    producer.close()
    for consumer in consumers:
        consumer.close()
