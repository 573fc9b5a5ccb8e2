package io.magnetar.tests.security;

import io.netty.buffer.ByteBuf;
import io.netty.buffer.Unpooled;
import java.io.DataInputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.regex.Pattern;
import org.apache.pulsar.client.api.Consumer;
import org.apache.pulsar.client.api.Message;
import org.apache.pulsar.client.api.MessageId;
import org.apache.pulsar.client.api.Producer;
import org.apache.pulsar.client.api.ProducerAccessMode;
import org.apache.pulsar.client.api.PulsarClient;
import org.apache.pulsar.client.api.PulsarClientException;
import org.apache.pulsar.client.api.Reader;
import org.apache.pulsar.client.api.Schema;
import org.apache.pulsar.client.api.SubscriptionInitialPosition;
import org.apache.pulsar.client.api.SubscriptionType;
import org.apache.pulsar.client.api.TableView;
import org.apache.pulsar.common.api.proto.BaseCommand;
import org.apache.pulsar.common.api.proto.CommandConsumerStatsResponse;
import org.apache.pulsar.common.api.proto.CommandSubscribe;
import org.apache.pulsar.common.protocol.Commands;

/**
 * {@code protocol-checks} and {@code listener-check}: Pulsar's Java client against the parts of
 * the protocol beyond plain produce and consume.
 *
 * <ul>
 *   <li>PATTERN_WATCH: a regex consumer finds a topic created after it subscribed through the
 *       broker's topic-list watcher (WATCH_TOPIC_LIST / WATCH_TOPIC_UPDATE; its periodic
 *       re-listing is an hour away), and ignores a topic the regex does not match.
 *   <li>READ_COMPACTED and TABLE_VIEW: keyed values in batches and a tombstone, compacted
 *       through the admin REST API; a compacted reader sees each live key once, a plain reader
 *       every message, and a TableView the latest value of each live key, then live updates.
 *   <li>FENCING: an ExclusiveWithFencing producer takes the topic from an Exclusive one.
 *   <li>CONSUMER_STATS: the broker's stats of one consumer. Pulsar's Java client has no call for
 *       CONSUMER_STATS (only the C++ client has one), so this check speaks the binary protocol
 *       itself, with the frames and codec of Pulsar's own pulsar-common.
 *   <li>NON_PERSISTENT: a non-persistent topic fanned out to the four subscription types.
 *   <li>LISTENER ({@code listener-check}): a client with {@code listenerName} looks topics up
 *       through a named advertised listener, and is refused for a name the broker lacks.
 * </ul>
 *
 * <p>Prints one {@code NAME ok} line per check; an {@link AssertionError} names the first that
 * fails. Every wait is bounded.
 */
final class ProtocolChecks {
    private static final int OPERATION_TIMEOUT_SECONDS = 15;
    /** How long a client keeps retrying a lookup through a listener the broker does not have. */
    private static final int REFUSED_LOOKUP_TIMEOUT_SECONDS = 5;
    private static final int RECEIVE_TIMEOUT_SECONDS = 10;
    /** How long a regex consumer may take to find a new topic. */
    private static final int DISCOVERY_TIMEOUT_SECONDS = 20;
    /** How long a TableView may take to show a value published after it was created. */
    private static final int TABLE_VIEW_UPDATE_SECONDS = 10;
    private static final int COMPACTION_TIMEOUT_SECONDS = 60;
    /** A reader that receives nothing for this long has read everything. */
    private static final int QUIET_MILLIS = 2_000;

    private static final int KEYS = 20;
    private static final int ROUNDS = 3;
    private static final String TOMBSTONED = "k7";
    private static final int NON_PERSISTENT_COUNT = 100;
    /** A non-persistent consumer that receives nothing for this long has all it will get. */
    private static final int NON_PERSISTENT_QUIET_MILLIS = 1_000;

    private ProtocolChecks() {}

    static String run(String serviceUrl, String adminUrl, String prefix) throws Exception {
        if (!prefix.startsWith("persistent://")) {
            throw new Options.UsageException("protocol-checks: --topic-prefix must be persistent://TENANT/NS/PREFIX");
        }
        List<String> done = new ArrayList<>();
        try (PulsarClient client = client(serviceUrl, null, OPERATION_TIMEOUT_SECONDS)) {
            patternWatch(client, prefix);
            done.add("PATTERN_WATCH ok");
            String table = prefix + "-table";
            Map<String, String> live = produceKeyed(client, table);
            compact(adminUrl, table);
            readCompacted(client, table, live);
            done.add("READ_COMPACTED ok");
            tableView(client, table, live);
            done.add("TABLE_VIEW ok");
            fencing(client, prefix + "-fence");
            done.add("FENCING ok");
            consumerStats(serviceUrl, prefix + "-stats");
            done.add("CONSUMER_STATS ok");
            nonPersistent(client, "non-" + prefix + "-np");
            done.add("NON_PERSISTENT ok");
        }
        return String.join("\n", done);
    }

    /**
     * {@code listener-check}: produces through the advertised listener {@code listener} and reads
     * the message back; with {@code expectFail}, creating the producer must fail instead (the
     * lookup names a listener the broker does not have).
     */
    static String listenerCheck(String serviceUrl, String listener, String topic, boolean expectFail)
            throws Exception {
        // A refused lookup (ServiceNotReady) is retried with backoff until the operation times out.
        int timeout = expectFail ? REFUSED_LOOKUP_TIMEOUT_SECONDS : OPERATION_TIMEOUT_SECONDS;
        try (PulsarClient client = client(serviceUrl, listener, timeout)) {
            if (expectFail) {
                try (Producer<byte[]> producer = client.newProducer().topic(topic).create()) {
                    throw new AssertionError("a producer through the unknown listener " + listener + " was created");
                } catch (PulsarClientException expected) {
                    System.err.println("listener " + listener + " refused: " + expected);
                }
                return "LISTENER_REFUSED " + listener + " ok";
            }
            byte[] sent = ("through " + listener).getBytes(StandardCharsets.UTF_8);
            MessageId id;
            try (Producer<byte[]> producer = client.newProducer().topic(topic).create()) {
                id = producer.send(sent);
            }
            // From the message just sent: the topic may hold others' messages before it.
            try (Reader<byte[]> reader = client.newReader().topic(topic).startMessageId(id)
                    .startMessageIdInclusive().create()) {
                Message<byte[]> message = reader.readNext(RECEIVE_TIMEOUT_SECONDS, TimeUnit.SECONDS);
                if (message == null || !text(sent).equals(text(message.getValue()))) {
                    throw new AssertionError(topic + ": the message sent through listener " + listener
                            + " came back as " + (message == null ? "nothing" : text(message.getValue())));
                }
            }
            return "LISTENER " + listener + " ok";
        }
    }

    private static PulsarClient client(String serviceUrl, String listener, int operationTimeoutSeconds)
            throws PulsarClientException {
        var builder = PulsarClient.builder()
                .serviceUrl(serviceUrl)
                .operationTimeout(operationTimeoutSeconds, TimeUnit.SECONDS)
                .connectionTimeout(5, TimeUnit.SECONDS);
        if (listener != null) {
            builder.listenerName(listener);
        }
        return builder.build();
    }

    private static String text(byte[] value) {
        return value == null ? "null" : new String(value, StandardCharsets.UTF_8);
    }

    private static String unique(String what) {
        return what + "-" + UUID.randomUUID().toString().substring(0, 8);
    }

    // ----------------------------------------------------------------------------------------
    // PATTERN_WATCH

    private static void patternWatch(PulsarClient client, String prefix) throws PulsarClientException {
        try (Consumer<byte[]> consumer = client.newConsumer()
                .topicsPattern(Pattern.compile(prefix + "-rx-.*"))
                // Only the broker's watcher can find the new topic in time.
                .patternAutoDiscoveryPeriod(1, TimeUnit.HOURS)
                .subscriptionName(unique("pattern"))
                .subscriptionInitialPosition(SubscriptionInitialPosition.Earliest)
                .subscribe()) {
            try (Producer<byte[]> other = client.newProducer().topic(prefix + "-other-1").create()) {
                other.send("not matched".getBytes(StandardCharsets.UTF_8));
            }
            String matching = prefix + "-rx-1";
            try (Producer<byte[]> producer = client.newProducer().topic(matching).create()) {
                producer.send("matched".getBytes(StandardCharsets.UTF_8));
            }
            Message<byte[]> message = consumer.receive(DISCOVERY_TIMEOUT_SECONDS, TimeUnit.SECONDS);
            if (message == null) {
                throw new AssertionError("the pattern consumer did not find " + matching + " within "
                        + DISCOVERY_TIMEOUT_SECONDS + " s (no WATCH_TOPIC_UPDATE reached it?)");
            }
            if (!"matched".equals(text(message.getValue())) || !message.getTopicName().equals(matching)) {
                throw new AssertionError("the pattern consumer received " + text(message.getValue()) + " from "
                        + message.getTopicName() + ", expected 'matched' from " + matching);
            }
            consumer.acknowledge(message);
            Message<byte[]> extra = consumer.receive(QUIET_MILLIS, TimeUnit.MILLISECONDS);
            if (extra != null) {
                throw new AssertionError("the pattern consumer also received " + text(extra.getValue()) + " from "
                        + extra.getTopicName() + ", which its regex does not match");
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // READ_COMPACTED and TABLE_VIEW

    /**
     * {@link #ROUNDS} rounds of a value for each of {@link #KEYS} keys, batched, then a tombstone
     * (a null value) for {@link #TOMBSTONED}. Returns each live key's latest value.
     */
    private static Map<String, String> produceKeyed(PulsarClient client, String topic) throws Exception {
        Map<String, String> live = new TreeMap<>();
        try (Producer<byte[]> producer = client.newProducer(Schema.BYTES).topic(topic)
                .enableBatching(true)
                .batchingMaxMessages(8)
                .batchingMaxPublishDelay(50, TimeUnit.MILLISECONDS)
                .create()) {
            List<CompletableFuture<MessageId>> sends = new ArrayList<>();
            for (int round = 0; round < ROUNDS; round++) {
                for (int k = 0; k < KEYS; k++) {
                    String value = "r" + round + "-k" + k;
                    sends.add(producer.newMessage().key("k" + k)
                            .value(value.getBytes(StandardCharsets.UTF_8)).sendAsync());
                    live.put("k" + k, value);
                }
            }
            producer.flush();
            CompletableFuture.allOf(sends.toArray(new CompletableFuture<?>[0]))
                    .get(OPERATION_TIMEOUT_SECONDS, TimeUnit.SECONDS);
            producer.newMessage().key(TOMBSTONED).value(null).send();
            live.remove(TOMBSTONED);
        }
        return live;
    }

    /** Compacts the topic through the admin REST API and waits for the compaction to succeed. */
    private static void compact(String adminUrl, String topic) throws Exception {
        String path = adminUrl.replaceAll("/+$", "") + "/admin/v2/persistent/"
                + topic.substring("persistent://".length()) + "/compaction";
        HttpClient http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();
        HttpResponse<String> started = http.send(HttpRequest.newBuilder(URI.create(path))
                        .PUT(HttpRequest.BodyPublishers.noBody()).timeout(Duration.ofSeconds(30)).build(),
                HttpResponse.BodyHandlers.ofString());
        if (started.statusCode() != 200 && started.statusCode() != 204) {
            throw new AssertionError("PUT " + path + " answered " + started.statusCode() + ": " + started.body());
        }
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(COMPACTION_TIMEOUT_SECONDS);
        String last = "";
        while (System.nanoTime() < deadline) {
            HttpResponse<String> status = http.send(HttpRequest.newBuilder(URI.create(path)).GET()
                    .timeout(Duration.ofSeconds(30)).build(), HttpResponse.BodyHandlers.ofString());
            last = status.statusCode() + " " + status.body();
            String body = status.body().replace(" ", "");
            if (status.statusCode() == 200 && body.contains("\"status\":\"SUCCESS\"")) {
                return;
            }
            if (body.contains("\"status\":\"ERROR\"")) {
                throw new AssertionError("compaction of " + topic + " failed: " + last);
            }
            Thread.sleep(200);
        }
        throw new AssertionError("compaction of " + topic + " did not succeed within " + COMPACTION_TIMEOUT_SECONDS
                + " s; last status: " + last);
    }

    /** Everything a reader receives until it is quiet for {@link #QUIET_MILLIS}. */
    private static List<Message<byte[]>> readAll(Reader<byte[]> reader, int atMost) throws PulsarClientException {
        List<Message<byte[]>> messages = new ArrayList<>();
        while (messages.size() <= atMost) {
            Message<byte[]> message = reader.readNext(QUIET_MILLIS, TimeUnit.MILLISECONDS);
            if (message == null) {
                break;
            }
            messages.add(message);
        }
        return messages;
    }

    private static void readCompacted(PulsarClient client, String topic, Map<String, String> live)
            throws IOException {
        int total = ROUNDS * KEYS + 1;
        try (Reader<byte[]> reader = client.newReader(Schema.BYTES).topic(topic)
                .readCompacted(true).startMessageId(MessageId.earliest).create()) {
            Map<String, String> seen = new TreeMap<>();
            List<String> duplicates = new ArrayList<>();
            for (Message<byte[]> message : readAll(reader, total)) {
                String previous = seen.put(message.getKey(), text(message.getValue()));
                if (previous != null) {
                    duplicates.add(message.getKey() + "=" + previous + "/" + text(message.getValue()));
                }
            }
            if (!duplicates.isEmpty() || !seen.equals(live)) {
                throw new AssertionError(topic + ": the compacted reader read " + seen
                        + (duplicates.isEmpty() ? "" : " with keys read twice " + duplicates)
                        + ", expected exactly " + live);
            }
        }
        try (Reader<byte[]> reader = client.newReader(Schema.BYTES).topic(topic)
                .startMessageId(MessageId.earliest).create()) {
            List<Message<byte[]>> all = readAll(reader, total);
            Message<byte[]> lastMessage = all.isEmpty() ? null : all.get(all.size() - 1);
            if (all.size() != total) {
                throw new AssertionError(topic + ": a plain reader read " + all.size() + " messages, expected "
                        + total);
            }
            if (!TOMBSTONED.equals(lastMessage.getKey()) || lastMessage.getValue() != null) {
                throw new AssertionError(topic + ": a plain reader's last message is " + lastMessage.getKey() + "="
                        + text(lastMessage.getValue()) + ", expected the tombstone " + TOMBSTONED + "=null");
            }
        }
    }

    private static void tableView(PulsarClient client, String topic, Map<String, String> live) throws Exception {
        try (TableView<byte[]> view = client.newTableView(Schema.BYTES).topic(topic).createAsync()
                .get(2L * OPERATION_TIMEOUT_SECONDS, TimeUnit.SECONDS)) {
            Map<String, String> held = snapshot(view);
            if (!held.equals(live)) {
                throw new AssertionError(topic + ": the TableView holds " + held + ", expected " + live);
            }
            try (Producer<byte[]> producer = client.newProducer(Schema.BYTES).topic(topic).create()) {
                producer.newMessage().key("k3").value("updated-k3".getBytes(StandardCharsets.UTF_8)).send();
                producer.newMessage().key("k5").value(null).send();
            }
            live.put("k3", "updated-k3");
            live.remove("k5");
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(TABLE_VIEW_UPDATE_SECONDS);
            while (!(held = snapshot(view)).equals(live)) {
                if (System.nanoTime() > deadline) {
                    throw new AssertionError(topic + ": " + TABLE_VIEW_UPDATE_SECONDS + " s after an update of k3 and a"
                            + " tombstone for k5, the TableView holds " + held + ", expected " + live);
                }
                Thread.sleep(100);
            }
        }
    }

    private static Map<String, String> snapshot(TableView<byte[]> view) {
        Map<String, String> held = new TreeMap<>();
        view.forEach((key, value) -> held.put(key, text(value)));
        return held;
    }

    // ----------------------------------------------------------------------------------------
    // FENCING

    private static void fencing(PulsarClient client, String topic) throws PulsarClientException {
        try (Producer<byte[]> a = client.newProducer().topic(topic).accessMode(ProducerAccessMode.Exclusive)
                .sendTimeout(RECEIVE_TIMEOUT_SECONDS, TimeUnit.SECONDS).create()) {
            a.send("a-1".getBytes(StandardCharsets.UTF_8));
            try (Producer<byte[]> b = client.newProducer().topic(topic)
                    .accessMode(ProducerAccessMode.ExclusiveWithFencing).create()) {
                b.send("b-1".getBytes(StandardCharsets.UTF_8));
                try {
                    a.send("a-2".getBytes(StandardCharsets.UTF_8));
                    throw new AssertionError(topic + ": the fenced Exclusive producer could still send");
                } catch (PulsarClientException.ProducerFencedException expected) {
                    // Pulsar fails the fenced producer's sends so.
                } catch (PulsarClientException other) {
                    throw new AssertionError(topic + ": the fenced producer's send failed with " + other
                            + ", expected ProducerFencedException");
                }
                try (Producer<byte[]> c = client.newProducer().topic(topic).accessMode(ProducerAccessMode.Exclusive)
                        .create()) {
                    throw new AssertionError(topic + ": an Exclusive producer was created while the fencing one holds"
                            + " the topic");
                } catch (PulsarClientException.ProducerFencedException
                        | PulsarClientException.ProducerBusyException expected) {
                    // Pulsar answers ProducerFenced ("Topic has an existing exclusive producer").
                } catch (PulsarClientException other) {
                    throw new AssertionError(topic + ": a second Exclusive producer was refused with " + other
                            + ", expected ProducerBusyException or ProducerFencedException");
                }
                b.send("b-2".getBytes(StandardCharsets.UTF_8));
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // CONSUMER_STATS, over a connection of our own with Pulsar's codec

    /** One binary-protocol connection: size-prefixed frames, commands parsed by pulsar-common. */
    private static final class RawConnection implements AutoCloseable {
        private final Socket socket;
        private final DataInputStream in;
        private final OutputStream out;

        RawConnection(String serviceUrl) throws IOException {
            URI uri = URI.create(serviceUrl);
            socket = new Socket();
            socket.connect(new InetSocketAddress(uri.getHost(), uri.getPort()), 5_000);
            socket.setSoTimeout(RECEIVE_TIMEOUT_SECONDS * 1_000);
            in = new DataInputStream(socket.getInputStream());
            out = socket.getOutputStream();
        }

        void send(ByteBuf frame) throws IOException {
            try {
                byte[] bytes = new byte[frame.readableBytes()];
                frame.readBytes(bytes);
                out.write(bytes);
                out.flush();
            } finally {
                frame.release();
            }
        }

        /** The next command other than a PING (answered) or a MESSAGE; times out as the socket does. */
        BaseCommand next() throws IOException {
            while (true) {
                int total = in.readInt();
                byte[] frame = new byte[total];
                in.readFully(frame);
                ByteBuf buffer = Unpooled.wrappedBuffer(frame);
                int commandSize = buffer.readInt();
                BaseCommand command = new BaseCommand();
                command.parseFrom(buffer, commandSize);
                if (command.getType() == BaseCommand.Type.PING) {
                    send(Commands.newPong());
                } else if (command.getType() != BaseCommand.Type.MESSAGE) {
                    return command;
                }
            }
        }

        /** The next command, which must be of type {@code expected}. */
        BaseCommand expect(BaseCommand.Type expected, String after) throws IOException {
            BaseCommand command = next();
            if (command.getType() != expected) {
                String error = command.hasError()
                        ? " " + command.getError().getError() + ": " + command.getError().getMessage() : "";
                throw new AssertionError("after " + after + " the broker sent " + command.getType() + error
                        + ", expected " + expected);
            }
            return command;
        }

        @Override
        public void close() throws IOException {
            socket.close();
        }
    }

    private static void consumerStats(String serviceUrl, String topic) throws Exception {
        long consumerId = 1;
        int permits = 1000;
        try (RawConnection connection = new RawConnection(serviceUrl)) {
            connection.send(Commands.newConnect("", "", "magnetar-protocol-checks"));
            connection.expect(BaseCommand.Type.CONNECTED, "CONNECT");
            connection.send(Commands.newSubscribe(topic, "stats-sub", consumerId, 1,
                    CommandSubscribe.SubType.Exclusive, 0, "stats-consumer", 0));
            connection.expect(BaseCommand.Type.SUCCESS, "SUBSCRIBE");
            connection.send(Commands.newFlow(consumerId, permits));
            BaseCommand request = new BaseCommand().setType(BaseCommand.Type.CONSUMER_STATS);
            request.setConsumerStats().setConsumerId(consumerId).setRequestId(2);
            connection.send(Commands.serializeWithSize(request));
            CommandConsumerStatsResponse stats = connection.expect(BaseCommand.Type.CONSUMER_STATS_RESPONSE,
                    "CONSUMER_STATS").getConsumerStatsResponse();
            if (stats.getRequestId() != 2 || stats.hasErrorCode()) {
                throw new AssertionError(topic + ": CONSUMER_STATS answered request " + stats.getRequestId() + " with "
                        + (stats.hasErrorCode() ? stats.getErrorCode() + ": " + stats.getErrorMessage() : "no error"));
            }
            String name = stats.hasConsumerName() ? stats.getConsumerName() : null;
            String type = stats.hasType() ? stats.getType() : null;
            long available = stats.hasAvailablePermits() ? stats.getAvailablePermits() : -1;
            if (!"stats-consumer".equals(name) || !SubscriptionType.Exclusive.name().equals(type) || available <= 0) {
                throw new AssertionError(topic + ": CONSUMER_STATS gave consumerName=" + name + " type=" + type
                        + " availablePermits=" + available + ", expected stats-consumer, Exclusive, > 0");
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // NON_PERSISTENT

    private static void nonPersistent(PulsarClient client, String topic) throws Exception {
        List<Consumer<byte[]>> all = new ArrayList<>();
        try {
            Consumer<byte[]> exclusive = subscribe(client, topic, "np-exclusive", SubscriptionType.Exclusive, all);
            List<Consumer<byte[]>> failover = List.of(
                    subscribe(client, topic, "np-failover", SubscriptionType.Failover, all),
                    subscribe(client, topic, "np-failover", SubscriptionType.Failover, all));
            List<Consumer<byte[]>> shared = List.of(
                    subscribe(client, topic, "np-shared", SubscriptionType.Shared, all),
                    subscribe(client, topic, "np-shared", SubscriptionType.Shared, all));
            List<Consumer<byte[]>> keyShared = List.of(
                    subscribe(client, topic, "np-key-shared", SubscriptionType.Key_Shared, all),
                    subscribe(client, topic, "np-key-shared", SubscriptionType.Key_Shared, all));
            // No batching: a batch would carry several keys to one Key_Shared consumer.
            try (Producer<byte[]> producer = client.newProducer().topic(topic).enableBatching(false).create()) {
                for (int i = 0; i < NON_PERSISTENT_COUNT; i++) {
                    producer.newMessage().key("key-" + (i % 10))
                            .value(("np-" + i).getBytes(StandardCharsets.UTF_8)).send();
                }
            }
            checkFanOut(topic, "Exclusive", List.of(exclusive), false);
            checkFanOut(topic, "Failover", failover, false);
            checkFanOut(topic, "Shared", shared, false);
            checkFanOut(topic, "Key_Shared", keyShared, true);
        } finally {
            for (Consumer<byte[]> consumer : all) {
                consumer.close();
            }
        }
    }

    private static Consumer<byte[]> subscribe(PulsarClient client, String topic, String subscription,
            SubscriptionType type, List<Consumer<byte[]>> all) throws PulsarClientException {
        Consumer<byte[]> consumer = client.newConsumer().topic(topic).subscriptionName(subscription)
                .subscriptionType(type).subscribe();
        all.add(consumer);
        return consumer;
    }

    /**
     * The consumers of one subscription, between them, received each of the messages once; with
     * {@code byKey}, each key went to one consumer only. The messages were all published before,
     * and a non-persistent topic dispatches as it publishes, so each consumer is drained until it
     * is quiet.
     */
    private static void checkFanOut(String topic, String type, List<Consumer<byte[]>> consumers, boolean byKey)
            throws PulsarClientException {
        Map<String, Integer> times = new HashMap<>();
        Map<String, Set<Integer>> keyOwners = new TreeMap<>();
        int received = 0;
        for (int c = 0; c < consumers.size(); c++) {
            Consumer<byte[]> consumer = consumers.get(c);
            Message<byte[]> message;
            while (received <= 2 * NON_PERSISTENT_COUNT
                    && (message = consumer.receive(NON_PERSISTENT_QUIET_MILLIS, TimeUnit.MILLISECONDS)) != null) {
                received++;
                times.merge(text(message.getValue()), 1, Integer::sum);
                keyOwners.computeIfAbsent(message.getKey(), key -> new HashSet<>()).add(c);
                consumer.acknowledge(message);
            }
        }
        List<String> missing = new ArrayList<>();
        for (int i = 0; i < NON_PERSISTENT_COUNT; i++) {
            if (!times.containsKey("np-" + i)) {
                missing.add("np-" + i);
            }
        }
        List<String> twice = new ArrayList<>();
        times.forEach((value, count) -> {
            if (count > 1) {
                twice.add(value + " x" + count);
            }
        });
        if (!missing.isEmpty() || !twice.isEmpty()) {
            throw new AssertionError(topic + ": the " + type + " subscription received " + received + " of "
                    + NON_PERSISTENT_COUNT + " messages; missing " + missing + ", received more than once " + twice);
        }
        if (byKey) {
            keyOwners.forEach((key, owners) -> {
                if (owners.size() > 1) {
                    throw new AssertionError(topic + ": Key_Shared delivered key " + key + " to both consumers: "
                            + keyOwners);
                }
            });
        }
    }
}
