"""The schema registry against Apache Pulsar's Java client (tests/java/security, built by
deploy/test.sh): AVRO and JSON POJOs, KeyValue in both encodings, primitives, AUTO_CONSUME
reading a typed producer's messages, AUTO_PRODUCE_BYTES, and an incompatible schema refused
with IncompatibleSchemaException; the broker then shows one schema history per topic."""

from __future__ import annotations

import json
import uuid

from magnetar_process import MagnetarProcess
from test_java_security import PulsarJava, must, pulsar_java  # noqa: F401  (the jar fixture)
from test_tenancy import http


def test_the_java_client_s_typed_schemas_work_end_to_end(magnetar: MagnetarProcess, pulsar_java: PulsarJava) -> None:
    prefix = f"persistent://public/default/java-schema-{uuid.uuid4().hex[:8]}"
    output = must(pulsar_java.call("schema-checks", "--service-url", magnetar.service_url, "--topic-prefix", prefix))
    for line in ["AVRO ok", "AUTO_CONSUME(AVRO) ok", "AUTO_PRODUCE_BYTES ok", "INCOMPATIBLE ok", "JSON ok",
                 "KEY_VALUE INLINE ok", "KEY_VALUE SEPARATED ok", "PRIMITIVES ok"]:  # fmt: skip
        assert line in output, output
    path = prefix.removeprefix("persistent://")
    status, body = http(magnetar, "GET", f"/admin/v2/schemas/{path}-avro/schemas")
    assert status == 200 and [v["type"] for v in body["getSchemaResponses"]] == ["AVRO"], body
    status, body = http(magnetar, "GET", f"/admin/v2/schemas/{path}-kv-inline/schema")
    assert status == 200 and body["type"] == "KEY_VALUE", body
    assert body["properties"]["kv.encoding.type"] == "INLINE", body
    assert json.loads(body["data"])["value"]["type"] == "record", body
