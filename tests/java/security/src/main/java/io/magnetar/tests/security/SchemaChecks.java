package io.magnetar.tests.security;

import java.util.ArrayList;
import java.util.List;
import java.util.Objects;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import org.apache.pulsar.client.api.Consumer;
import org.apache.pulsar.client.api.Message;
import org.apache.pulsar.client.api.Producer;
import org.apache.pulsar.client.api.PulsarClient;
import org.apache.pulsar.client.api.PulsarClientException;
import org.apache.pulsar.client.api.Schema;
import org.apache.pulsar.client.api.SubscriptionInitialPosition;
import org.apache.pulsar.client.api.schema.GenericRecord;
import org.apache.pulsar.common.schema.KeyValue;
import org.apache.pulsar.common.schema.KeyValueEncodingType;

/**
 * {@code schema-checks}: Pulsar's Java client with typed schemas against a broker: AVRO and
 * JSON POJOs, KeyValue (inline and separated), primitives, AUTO_CONSUME reading what a typed
 * producer wrote as GenericRecord, AUTO_PRODUCE_BYTES writing pre-encoded bytes to a typed
 * topic, and an incompatible schema refused with IncompatibleSchemaException. Prints one line
 * per check; an {@link AssertionError} names the first that fails.
 */
final class SchemaChecks {
    private static final int OPERATION_TIMEOUT_SECONDS = 15;
    private static final int RECEIVE_TIMEOUT_SECONDS = 10;
    private static final int COUNT = 5;

    /** A record as an application declares it. */
    public static class Person {
        public String name;
        public int age;

        public Person() {}

        Person(String name, int age) {
            this.name = name;
            this.age = age;
        }

        @Override
        public boolean equals(Object other) {
            return other instanceof Person && Objects.equals(name, ((Person) other).name) && age == ((Person) other).age;
        }

        @Override
        public int hashCode() {
            return Objects.hash(name, age);
        }

        @Override
        public String toString() {
            return name + "/" + age;
        }
    }

    /** Another record: not compatible with {@link Person}. */
    public static class Invoice {
        public long number;
        public double amount;
    }

    private SchemaChecks() {}

    static String run(String serviceUrl, String prefix) throws Exception {
        List<String> done = new ArrayList<>();
        try (PulsarClient client = PulsarClient.builder()
                .serviceUrl(serviceUrl)
                .operationTimeout(OPERATION_TIMEOUT_SECONDS, TimeUnit.SECONDS)
                .build()) {
            String avroTopic = prefix + "-avro";
            roundtrip(client, avroTopic, Schema.AVRO(Person.class), SchemaChecks::person);
            done.add("AVRO ok");
            autoConsume(client, avroTopic);
            done.add("AUTO_CONSUME(AVRO) ok");
            autoProduce(client, avroTopic);
            done.add("AUTO_PRODUCE_BYTES ok");
            incompatible(client, avroTopic);
            done.add("INCOMPATIBLE ok");
            String jsonTopic = prefix + "-json";
            roundtrip(client, jsonTopic, Schema.JSON(Person.class), SchemaChecks::person);
            autoConsume(client, jsonTopic);
            done.add("JSON ok");
            for (KeyValueEncodingType encoding : KeyValueEncodingType.values()) {
                Schema<KeyValue<String, Person>> schema =
                        Schema.KeyValue(Schema.STRING, Schema.AVRO(Person.class), encoding);
                roundtrip(client, prefix + "-kv-" + encoding.name().toLowerCase(), schema,
                        i -> new KeyValue<>("key-" + i, person(i)));
                done.add("KEY_VALUE " + encoding + " ok");
            }
            roundtrip(client, prefix + "-int64", Schema.INT64, i -> 1_000_000_000_000L + i);
            roundtrip(client, prefix + "-string", Schema.STRING, i -> "text-" + i);
            done.add("PRIMITIVES ok");
        }
        return String.join("\n", done);
    }

    private static Person person(int i) {
        return new Person("person-" + i, 30 + i);
    }

    private interface Make<T> {
        T make(int index);
    }

    private static <T> void roundtrip(PulsarClient client, String topic, Schema<T> schema, Make<T> make)
            throws PulsarClientException {
        try (Consumer<T> consumer = client.newConsumer(schema).topic(topic)
                        .subscriptionName("typed-" + UUID.randomUUID().toString().substring(0, 8))
                        .subscriptionInitialPosition(SubscriptionInitialPosition.Latest)
                        .subscribe();
                Producer<T> producer = client.newProducer(schema).topic(topic).create()) {
            for (int i = 0; i < COUNT; i++) {
                producer.send(make.make(i));
            }
            for (int i = 0; i < COUNT; i++) {
                Message<T> message = consumer.receive(RECEIVE_TIMEOUT_SECONDS, TimeUnit.SECONDS);
                if (message == null) {
                    throw new AssertionError(topic + ": message " + i + " did not arrive");
                }
                T expected = make.make(i);
                T got = message.getValue();
                boolean same = expected instanceof KeyValue
                        ? Objects.equals(((KeyValue<?, ?>) expected).getKey(), ((KeyValue<?, ?>) got).getKey())
                                && Objects.equals(((KeyValue<?, ?>) expected).getValue(), ((KeyValue<?, ?>) got).getValue())
                        : Objects.equals(expected, got);
                if (!same) {
                    throw new AssertionError(topic + ": message " + i + " is " + got + ", sent " + expected);
                }
                if (message.getSchemaVersion() == null) {
                    throw new AssertionError(topic + ": message " + i + " carries no schema version");
                }
                consumer.acknowledge(message);
            }
        }
    }

    /** Reads the topic from the start with AUTO_CONSUME: fields by name, from the topic's schema. */
    private static void autoConsume(PulsarClient client, String topic) throws PulsarClientException {
        try (Consumer<GenericRecord> consumer = client.newConsumer(Schema.AUTO_CONSUME()).topic(topic)
                .subscriptionName("auto-" + UUID.randomUUID().toString().substring(0, 8))
                .subscriptionInitialPosition(SubscriptionInitialPosition.Earliest)
                .subscribe()) {
            for (int i = 0; i < COUNT; i++) {
                Message<GenericRecord> message = consumer.receive(RECEIVE_TIMEOUT_SECONDS, TimeUnit.SECONDS);
                if (message == null) {
                    throw new AssertionError(topic + ": AUTO_CONSUME message " + i + " did not arrive");
                }
                GenericRecord record = message.getValue();
                Object name = record.getField("name");
                if (!person(i).name.equals(String.valueOf(name))) {
                    throw new AssertionError(topic + ": AUTO_CONSUME read name " + name + " for message " + i);
                }
            }
        }
    }

    /** AUTO_PRODUCE_BYTES: bytes already encoded with the topic's schema are checked and stored. */
    private static void autoProduce(PulsarClient client, String topic) throws PulsarClientException {
        Schema<Person> avro = Schema.AVRO(Person.class);
        try (Consumer<Person> consumer = client.newConsumer(avro).topic(topic)
                        .subscriptionName("auto-produce-" + UUID.randomUUID().toString().substring(0, 8))
                        .subscriptionInitialPosition(SubscriptionInitialPosition.Latest)
                        .subscribe();
                Producer<byte[]> producer = client.newProducer(Schema.AUTO_PRODUCE_BYTES()).topic(topic).create()) {
            Person sent = new Person("raw-bytes", 99);
            producer.send(avro.encode(sent));
            Message<Person> message = consumer.receive(RECEIVE_TIMEOUT_SECONDS, TimeUnit.SECONDS);
            if (message == null || !sent.equals(message.getValue())) {
                throw new AssertionError(topic + ": AUTO_PRODUCE_BYTES message came back as "
                        + (message == null ? "nothing" : message.getValue()));
            }
        }
    }

    private static void incompatible(PulsarClient client, String topic) throws PulsarClientException {
        try (Producer<Invoice> producer = client.newProducer(Schema.AVRO(Invoice.class)).topic(topic).create()) {
            throw new AssertionError(topic + ": a producer with an incompatible schema was created");
        } catch (PulsarClientException.IncompatibleSchemaException expected) {
            // What Pulsar answers.
        }
    }
}
