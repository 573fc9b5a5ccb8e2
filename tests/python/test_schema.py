"""The schema registry with the official Python client's typed API against a real
`magnetar standalone`: `pulsar.schema.Record` classes with AvroSchema and JsonSchema (nested
records, enums, arrays, maps, defaults, optional fields) produced and consumed; evolution
accepted or refused by the namespace's compatibility strategy, with IncompatibleSchema and
nothing stored when refused; the registry over REST in pulsar-admin's paths; malformed
definitions refused with a clear error.
"""

from __future__ import annotations

import json
import uuid
from enum import Enum

import pulsar
import pytest
from pulsar.schema import (
    Array,
    AvroSchema,
    Boolean,
    CustomEnum,
    Double,
    Integer,
    JsonSchema,
    Long,
    Map,
    Record,
    String,
    StringSchema,
)

from magnetar_process import MagnetarProcess
from test_tenancy import http


class Color(Enum):
    RED = 1
    GREEN = 2
    BLUE = 3


class Address(Record):
    street = String()
    zip_code = Integer()


class User(Record):
    name = String(required=True)
    age = Integer(default=18)
    email = String()  # optional: a union with null
    score = Double()
    active = Boolean(default=True)
    favorite = CustomEnum(Color)
    tags = Array(String())
    counters = Map(Long())
    address = Address()


def a_user(index: int) -> User:
    return User(
        name=f"user-{index}",
        age=20 + index,
        email=None if index % 2 else f"u{index}@example.com",
        score=index * 1.5,
        active=index % 3 != 0,
        favorite=Color.GREEN,
        tags=["a", f"t{index}"],
        counters={"clicks": index, "views": index * 10},
        address=Address(street=f"{index} Main St", zip_code=10000 + index),
    )


def same_user(got: User, sent: User) -> bool:
    fields = ["name", "age", "email", "score", "active", "favorite", "tags", "counters"]
    return all(getattr(got, f) == getattr(sent, f) for f in fields) and (
        got.address.street == sent.address.street and got.address.zip_code == sent.address.zip_code
    )


def topic_in(namespace: str) -> str:
    return f"persistent://{namespace}/schema-{uuid.uuid4().hex[:8]}"


def new_namespace(magnetar: MagnetarProcess, strategy: str | None = None) -> str:
    namespace = f"public/schemas-{uuid.uuid4().hex[:8]}"
    status, body = http(magnetar, "PUT", f"/admin/v2/namespaces/{namespace}", {})
    assert status in (200, 204), (status, body)
    if strategy:
        status, body = http(
            magnetar, "PUT", f"/admin/v2/namespaces/{namespace}/schemaCompatibilityStrategy", raw=json.dumps(strategy)
        )
        assert status in (200, 204), (status, body)
    return namespace


def schema_versions(magnetar: MagnetarProcess, topic: str) -> list[dict]:
    path = topic.removeprefix("persistent://")
    status, body = http(magnetar, "GET", f"/admin/v2/schemas/{path}/schemas")
    assert status == 200, (status, body)
    return body["getSchemaResponses"]


@pytest.mark.parametrize("schema_class", [AvroSchema, JsonSchema], ids=["avro", "json"])
def test_typed_records_round_trip(client: pulsar.Client, magnetar: MagnetarProcess, schema_class) -> None:
    topic = topic_in("public/default")
    consumer = client.subscribe(topic, "typed", schema=schema_class(User))
    producer = client.create_producer(topic, schema=schema_class(User))
    sent = [a_user(index) for index in range(10)]
    for user in sent:
        producer.send(user)
    for user in sent:
        message = consumer.receive(timeout_millis=10_000)
        assert same_user(message.value(), user), (message.value(), user)
        assert message.schema_version(), "each message carries the producer's schema version"
        consumer.acknowledge(message)
    versions = schema_versions(magnetar, topic)
    assert len(versions) == 1
    expected_type = "AVRO" if schema_class is AvroSchema else "JSON"
    assert versions[0]["type"] == expected_type and versions[0]["version"] == 0
    definition = json.loads(versions[0]["data"])
    assert definition["type"] == "record" and definition["name"] == "User"
    # A second producer with the same schema reuses version 0.
    client.create_producer(topic, schema=schema_class(User)).close()
    assert len(schema_versions(magnetar, topic)) == 1
    producer.close()
    consumer.close()


def _person_v1() -> type:
    class Person(Record):
        name = String(required=True)
        age = Integer(required=True)

    return Person


def _person_v2() -> type:
    """Version 1 without `age`: new readers ignore it (BACKWARD), old readers need it (not
    FORWARD). The same record name, as Avro resolution requires."""

    class Person(Record):
        name = String(required=True)

    return Person


UserV1 = _person_v1()
UserV2 = _person_v2()


@pytest.mark.parametrize("strategy,accepted", [("BACKWARD", True), ("FORWARD", False)])
def test_evolution_is_judged_by_the_namespace_strategy(
    client: pulsar.Client, magnetar: MagnetarProcess, strategy: str, accepted: bool
) -> None:
    topic = topic_in(new_namespace(magnetar, strategy))
    v1 = client.create_producer(topic, schema=AvroSchema(UserV1))
    v1.send(UserV1(name="old", age=40))
    if accepted:
        v2 = client.create_producer(topic, schema=AvroSchema(UserV2))
        v2.send(UserV2(name="new"))
        assert [v["version"] for v in schema_versions(magnetar, topic)] == [0, 1]
        # A consumer with the newest schema reads both.
        consumer = client.subscribe(
            topic, "readers", schema=AvroSchema(UserV2), initial_position=pulsar.InitialPosition.Earliest
        )
        names = [consumer.receive(timeout_millis=10_000).value().name for _ in range(2)]
        assert names == ["old", "new"]
        consumer.close()
        v2.close()
    else:
        with pytest.raises(pulsar.IncompatibleSchema):
            client.create_producer(topic, schema=AvroSchema(UserV2))
        assert [v["version"] for v in schema_versions(magnetar, topic)] == [0], "nothing stored"
    v1.close()


def test_a_different_type_is_incompatible_and_schemaless_producers_may_be_refused(
    client: pulsar.Client, magnetar: MagnetarProcess
) -> None:
    namespace = new_namespace(magnetar)
    topic = topic_in(namespace)
    client.create_producer(topic, schema=AvroSchema(UserV1)).close()
    with pytest.raises(pulsar.IncompatibleSchema):
        client.create_producer(topic, schema=StringSchema())
    # Without validation enforced, a producer without a schema may still publish bytes...
    client.create_producer(topic).close()
    status, body = http(magnetar, "POST", f"/admin/v2/namespaces/{namespace}/schemaValidationEnforced", True)
    assert status in (200, 204), (status, body)
    # ...with it, it is refused.
    with pytest.raises(pulsar.IncompatibleSchema):
        client.create_producer(topic)
    assert len(schema_versions(magnetar, topic)) == 1


def test_auto_update_off_lets_clients_use_only_registered_schemas(
    client: pulsar.Client, magnetar: MagnetarProcess
) -> None:
    namespace = new_namespace(magnetar)
    topic = topic_in(namespace)
    status, _ = http(magnetar, "POST", f"/admin/v2/namespaces/{namespace}/isAllowAutoUpdateSchema", False)
    assert status in (200, 204)
    with pytest.raises(pulsar.IncompatibleSchema):
        client.create_producer(topic, schema=AvroSchema(UserV1))
    # An administrator registers it over REST; then producers may use it.
    payload = {"type": "AVRO", "schema": AvroSchema(UserV1).schema_info().schema(), "properties": {}}
    status, body = http(magnetar, "POST", f"/admin/v2/schemas/{topic.removeprefix('persistent://')}/schema", payload)
    assert status == 200 and body["version"]["version"] == 0, (status, body)
    producer = client.create_producer(topic, schema=AvroSchema(UserV1))
    producer.send(UserV1(name="registered", age=1))
    producer.close()


def test_schemas_over_rest(magnetar: MagnetarProcess) -> None:
    namespace = new_namespace(magnetar, "FULL")
    path = f"/admin/v2/schemas/{namespace}/rest-{uuid.uuid4().hex[:8]}"
    v1 = json.dumps({"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]})
    v2 = json.dumps(
        {"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}, {"name": "b", "type": "string", "default": ""}]}
    )
    breaking = json.dumps({"type": "record", "name": "R", "fields": [{"name": "c", "type": "long"}]})
    status, _ = http(magnetar, "GET", f"{path}/schema")
    assert status == 404
    assert http(magnetar, "POST", f"{path}/schema", {"type": "AVRO", "schema": v1})[1]["version"]["version"] == 0
    status, body = http(magnetar, "POST", f"{path}/compatibility", {"type": "AVRO", "schema": v2})
    assert status == 200 and body == {"compatibility": True, "schemaCompatibilityStrategy": "FULL"}, body
    status, body = http(magnetar, "POST", f"{path}/compatibility", {"type": "AVRO", "schema": breaking})
    assert status == 200 and body["compatibility"] is False, body
    status, body = http(magnetar, "POST", f"{path}/schema", {"type": "AVRO", "schema": breaking})
    assert status == 409, (status, body)
    assert http(magnetar, "POST", f"{path}/schema", {"type": "AVRO", "schema": v2})[1]["version"]["version"] == 1
    status, body = http(magnetar, "GET", f"{path}/schema/0")
    assert status == 200 and json.loads(body["data"]) == json.loads(v1) and body["type"] == "AVRO", body
    status, body = http(magnetar, "POST", f"{path}/version", {"type": "AVRO", "schema": v2})
    assert status == 200 and body["version"] == 1, body
    status, body = http(magnetar, "DELETE", f"{path}/schema")
    assert status == 200 and body["version"] == 2, body
    assert http(magnetar, "GET", f"{path}/schema")[0] == 404
    # After a deletion anything may be registered; versions keep counting.
    assert http(magnetar, "POST", f"{path}/schema", {"type": "AVRO", "schema": breaking})[1]["version"]["version"] == 3


@pytest.mark.parametrize(
    "payload,needle",
    [
        ({"type": "AVRO", "schema": "{not json"}, "AVRO"),
        ({"type": "AVRO", "schema": json.dumps({"type": "record", "name": "R"})}, "AVRO"),
        ({"type": "STRING", "schema": "unexpected"}, "STRING"),
        ({"type": "NOT_A_TYPE", "schema": ""}, "NOT_A_TYPE"),
        ({"type": "PROTOBUF_NATIVE", "schema": "{}"}, "PROTOBUF_NATIVE"),
    ],
)
def test_malformed_definitions_get_a_clear_error(magnetar: MagnetarProcess, payload: dict, needle: str) -> None:
    path = f"/admin/v2/schemas/public/default/bad-{uuid.uuid4().hex[:8]}/schema"
    status, body = http(magnetar, "POST", path, payload)
    assert status == 422 and needle in body["reason"], (status, body)
    assert magnetar.process is not None and magnetar.process.poll() is None, "the broker still runs"


def test_partitions_share_one_history_and_deleting_the_topic_deletes_it(
    client: pulsar.Client, magnetar: MagnetarProcess
) -> None:
    name = f"parts-{uuid.uuid4().hex[:8]}"
    status, _ = http(magnetar, "PUT", f"/admin/v2/persistent/public/default/{name}/partitions", raw="3")
    assert status in (200, 204)
    topic = f"persistent://public/default/{name}"
    producer = client.create_producer(topic, schema=JsonSchema(UserV1))
    for index in range(9):
        producer.send(UserV1(name=f"p{index}", age=index), partition_key=str(index))
    producer.close()
    assert len(schema_versions(magnetar, topic)) == 1, "one history for every partition"
    consumer = client.subscribe(
        topic, "all", schema=JsonSchema(UserV1), initial_position=pulsar.InitialPosition.Earliest
    )
    got = sorted(consumer.receive(timeout_millis=10_000).value().age for _ in range(9))
    assert got == list(range(9))
    consumer.close()
    status, body = http(magnetar, "DELETE", f"/admin/v2/persistent/public/default/{name}/partitions")
    assert status in (200, 204), (status, body)
    assert http(magnetar, "GET", f"/admin/v2/schemas/public/default/{name}/schema")[0] == 404


def _proto_class(message: str, fields: list[tuple[str, int, int]], file_name: str) -> type:
    """A protobuf message class built at run time (what protoc would generate): package
    `shop`, message `message`, fields (name, number, FieldDescriptorProto type)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    file = descriptor_pb2.FileDescriptorProto(name=file_name, package="shop", syntax="proto3")
    proto = file.message_type.add(name=message)
    for name, number, field_type in fields:
        proto.field.add(name=name, number=number, type=field_type, label=1)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"shop.{message}"))


def test_protobuf_native_round_trip_and_root_message_check(client: pulsar.Client, magnetar: MagnetarProcess) -> None:
    from google.protobuf.descriptor_pb2 import FieldDescriptorProto as F
    from pulsar.schema import ProtobufNativeSchema

    order_v1 = _proto_class("Order", [("id", 1, F.TYPE_INT64), ("item", 2, F.TYPE_STRING)], "order.proto")
    order_v2 = _proto_class(
        "Order", [("id", 1, F.TYPE_INT64), ("item", 2, F.TYPE_STRING), ("quantity", 3, F.TYPE_INT32)], "order.proto"
    )
    invoice = _proto_class("Invoice", [("number", 1, F.TYPE_INT64)], "invoice.proto")
    topic = topic_in(new_namespace(magnetar))
    consumer = client.subscribe(topic, "proto", schema=ProtobufNativeSchema(order_v1))
    producer = client.create_producer(topic, schema=ProtobufNativeSchema(order_v1))
    producer.send(order_v1(id=7, item="lamp"))
    got = consumer.receive(timeout_millis=10_000).value()
    assert (got.id, got.item) == (7, "lamp")
    versions = schema_versions(magnetar, topic)
    assert [v["type"] for v in versions] == ["PROTOBUF_NATIVE"]
    assert json.loads(versions[0]["data"])["rootMessageTypeName"] == "shop.Order"
    # The same root message with a new field is a new version; another root message is not.
    client.create_producer(topic, schema=ProtobufNativeSchema(order_v2)).close()
    assert len(schema_versions(magnetar, topic)) == 2
    with pytest.raises(pulsar.IncompatibleSchema):
        client.create_producer(topic, schema=ProtobufNativeSchema(invoice))
    producer.close()
    consumer.close()
