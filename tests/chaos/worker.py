"""The official Python client's part of the chaos harness (chaos.py): producers and consumers
driven by a JSON spec, each event written as one JSON line. Same spec and events as the Rust
worker (client/examples/chaos_worker.rs):

    python worker.py SPEC.json EVENTS.jsonl

Roles: {"kind": "produce", "topic", "producer", "name" (null: no name, no deduplication),
"rate", "keys"} and {"kind": "consume", "topic", "subscription", "type", "consumer"}.
Events: sent / send_failed (producers), recv / acked (consumers), role_error, exit.
SIGUSR1 stops the producers (they wait for their receipts); SIGTERM closes all and exits.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time

import pulsar

TYPES = {
    "Exclusive": pulsar.ConsumerType.Exclusive,
    "Failover": pulsar.ConsumerType.Failover,
    "Shared": pulsar.ConsumerType.Shared,
    "Key_Shared": pulsar.ConsumerType.KeyShared,
}


class Events:
    def __init__(self, path: str) -> None:
        self.file = open(path, "w", buffering=1)
        self.lock = threading.Lock()

    def write(self, event: dict) -> None:
        event["t"] = time.time()
        line = json.dumps(event, separators=(",", ":"))
        with self.lock:
            self.file.write(line + "\n")
            self.file.flush()


def id_text(message_id: pulsar.MessageId) -> str:
    return f"{message_id.ledger_id()}:{message_id.entry_id()}"


def make_client(url: str) -> pulsar.Client:
    return pulsar.Client(
        url,
        operation_timeout_seconds=60,
        connection_timeout_ms=5000,
        logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error),
    )


def produce(url: str, role: dict, events: Events, stop: threading.Event) -> None:
    producer_id, keys, rate = role["producer"], int(role["keys"]), float(role["rate"])
    if rate <= 0 or keys <= 0:
        raise ValueError(f"producer {producer_id}: rate and keys must be positive")
    client = make_client(url)
    seqs = [0] * keys
    try:
        while True:
            try:
                options = dict(
                    batching_enabled=False,
                    block_if_queue_full=True,
                    max_pending_messages=1000,
                    send_timeout_millis=0,  # never give up on a message: the client resends
                )
                if role.get("name"):
                    options["producer_name"] = role["name"]
                producer = client.create_producer(role["topic"], **options)
                break
            except Exception as error:  # noqa: BLE001 - the cluster may be in a fault: retry
                events.write({"ev": "role_error", "role": f"producer {producer_id}", "error": str(error)})
                if stop.wait(1.0):
                    return
        period = 1.0 / rate
        next_at = time.monotonic()
        n = 0
        while not stop.is_set():
            key = n % keys
            n += 1
            seq = seqs[key]
            seqs[key] += 1
            key_text = f"k{key}"

            def done(result, message_id, key_text=key_text, seq=seq) -> None:
                if result == pulsar.Result.Ok:
                    events.write({"ev": "sent", "producer": producer_id, "key": key_text, "seq": seq,
                                  "id": id_text(message_id)})
                else:
                    events.write({"ev": "send_failed", "producer": producer_id, "key": key_text, "seq": seq,
                                  "error": str(result)})

            producer.send_async(f"{producer_id}|{key_text}|{seq}|".encode(), done, partition_key=key_text)
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            else:
                next_at = time.monotonic()
        try:
            producer.flush()
            producer.close()
        except Exception as error:  # noqa: BLE001
            events.write({"ev": "role_error", "role": f"producer {producer_id}", "error": f"close: {error}"})
    finally:
        client.close()


def consume(url: str, role: dict, events: Events, stop: threading.Event) -> None:
    consumer_id, subscription, topic = role["consumer"], role["subscription"], role["topic"]
    kind = TYPES.get(role["type"])
    if kind is None:
        raise ValueError(f"unknown subscription type {role['type']!r} (one of {sorted(TYPES)})")
    client = make_client(url)
    try:
        while True:
            try:
                consumer = client.subscribe(
                    topic,
                    subscription,
                    consumer_type=kind,
                    consumer_name=consumer_id,
                    initial_position=pulsar.InitialPosition.Earliest,
                    receiver_queue_size=100,
                )
                break
            except Exception as error:  # noqa: BLE001 - retry while the cluster is in a fault
                events.write({"ev": "role_error", "role": f"consumer {consumer_id}", "error": str(error)})
                if stop.wait(1.0):
                    return
        while not stop.is_set():
            try:
                message = consumer.receive(timeout_millis=500)
            except pulsar.Timeout:
                continue
            except Exception as error:  # noqa: BLE001
                events.write({"ev": "role_error", "role": f"consumer {consumer_id}", "error": f"receive: {error}"})
                time.sleep(0.5)
                continue
            base = {"consumer": consumer_id, "subscription": subscription, "topic": topic,
                    "id": id_text(message.message_id()), "redelivery": message.redelivery_count()}
            try:
                producer, key, seq, _ = message.data().decode().split("|", 3)
                base.update(producer=producer, key=key, seq=int(seq))
            except ValueError:
                base["garbled"] = message.data().decode(errors="replace")
            events.write({"ev": "recv", **base})
            consumer.acknowledge(message)
            events.write({"ev": "acked", **base})
        try:
            consumer.close()
        except Exception as error:  # noqa: BLE001
            events.write({"ev": "role_error", "role": f"consumer {consumer_id}", "error": f"close: {error}"})
    finally:
        client.close()


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: worker.py SPEC.json EVENTS.jsonl", file=sys.stderr)
        return 2
    with open(sys.argv[1]) as file:
        spec = json.load(file)
    if not spec.get("roles"):
        print(f"{sys.argv[1]}: no roles", file=sys.stderr)
        return 2
    events = Events(sys.argv[2])
    stop_producing, stop_all = threading.Event(), threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: stop_producing.set())
    signal.signal(signal.SIGTERM, lambda *_: stop_all.set())
    signal.signal(signal.SIGINT, lambda *_: stop_all.set())
    threads = []
    for role in spec["roles"]:
        if role["kind"] == "produce":
            target, stop = produce, stop_producing
        elif role["kind"] == "consume":
            target, stop = consume, stop_all
        else:
            print(f"unknown role kind {role['kind']!r}", file=sys.stderr)
            return 2

        def run(target=target, role=role, stop=stop) -> None:
            try:
                target(spec["url"], role, events, stop)
            except Exception as error:  # noqa: BLE001
                events.write({"ev": "role_error", "role": json.dumps(role), "error": repr(error)})

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
    while not stop_all.wait(0.2):
        pass
    stop_producing.set()
    for thread in threads:
        thread.join(timeout=20)
    events.write({"ev": "exit"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
