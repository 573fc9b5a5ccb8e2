"""The rest of the Pulsar protocol against Apache Pulsar's Java client (tests/java/security,
built by deploy/test.sh; `protocol-checks` and `listener-check` in ProtocolChecks.java):

- a regex consumer that finds a topic created after it subscribed through the broker's
  topic-list watcher (WATCH_TOPIC_LIST), and ignores a topic its regex does not match;
- keyed batches and a tombstone compacted through the admin API, then read by a compacted
  reader (each live key once), a plain reader (every message) and a TableView (latest values,
  then live updates and a new tombstone);
- an ExclusiveWithFencing producer fencing an Exclusive one;
- CONSUMER_STATS (over the binary protocol with pulsar-common's codec: the Java client has no
  call for it);
- a non-persistent topic fanned out to Exclusive, Failover, Shared and Key_Shared;
- advertised listeners: a client with `listenerName` produces through a listener the broker
  has, and is refused for one it does not.
"""

from __future__ import annotations

import uuid

from magnetar_process import MagnetarProcess
from test_java_security import PulsarJava, must, pulsar_java  # noqa: F401  (the jar fixture)
from test_producers import http

CHECKS = ["PATTERN_WATCH ok", "READ_COMPACTED ok", "TABLE_VIEW ok", "FENCING ok", "CONSUMER_STATS ok",
          "NON_PERSISTENT ok"]  # fmt: skip


def test_the_java_client_speaks_the_rest_of_the_protocol(magnetar: MagnetarProcess, pulsar_java: PulsarJava) -> None:
    prefix = f"persistent://public/default/java-protocol-{uuid.uuid4().hex[:8]}"
    output = must(pulsar_java.call("protocol-checks", "--service-url", magnetar.service_url,
                                   "--admin-url", magnetar.http_url, "--topic-prefix", prefix))  # fmt: skip
    for line in CHECKS:
        assert line in output.splitlines(), output
    # The compaction the checks asked for is the topic's last one, and it succeeded.
    table = prefix.removeprefix("persistent://") + "-table"
    status, body = http(magnetar, "GET", f"/admin/v2/persistent/{table}/compaction")
    assert status == 200 and body["status"] == "SUCCESS", body


def test_the_java_client_looks_up_through_named_listeners(
    listeners_magnetar: MagnetarProcess, pulsar_java: PulsarJava
) -> None:
    node = listeners_magnetar
    topic = f"persistent://public/default/java-listener-{uuid.uuid4().hex[:8]}"
    for listener in ["internal", "external"]:
        output = must(pulsar_java.call("listener-check", "--service-url", node.service_url,
                                       "--listener", listener, "--topic", topic))  # fmt: skip
        assert f"LISTENER {listener} ok" in output.splitlines(), output
    # A name the broker does not advertise: the lookup is refused and no producer is made.
    output = must(pulsar_java.call("listener-check", "--service-url", node.service_url,
                                   "--listener", "nope", "--topic", topic, "--expect-fail"))  # fmt: skip
    assert "LISTENER_REFUSED nope ok" in output.splitlines(), output
