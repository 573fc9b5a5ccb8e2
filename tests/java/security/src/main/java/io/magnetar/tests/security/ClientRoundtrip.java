package io.magnetar.tests.security;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import org.apache.pulsar.client.api.AuthenticationFactory;
import org.apache.pulsar.client.api.Consumer;
import org.apache.pulsar.client.api.Message;
import org.apache.pulsar.client.api.Producer;
import org.apache.pulsar.client.api.PulsarClient;
import org.apache.pulsar.client.api.PulsarClientException;

/**
 * {@code client-roundtrip}: Pulsar's Java client over {@code pulsar+ssl://} with a token, the
 * broker's certificate checked against a CA file and its host name verified: N messages
 * produced and consumed back in order, or (with {@code --expect-denied}) the producer refused
 * with {@link PulsarClientException.AuthorizationException}.
 */
final class ClientRoundtrip {
    /** Bounds every client call, so a broker that never answers fails the run, not hangs it. */
    private static final int OPERATION_TIMEOUT_SECONDS = 15;
    private static final int CONNECTION_TIMEOUT_SECONDS = 5;
    /** How long one message may take to come back. */
    private static final int RECEIVE_TIMEOUT_SECONDS = 10;

    private ClientRoundtrip() {}

    /** Returns what to print on success; throws {@link AssertionError} on a wrong outcome. */
    static String run(String serviceUrl, String trustCerts, String token, String topic, int count,
            boolean expectDenied) throws PulsarClientException {
        try (PulsarClient client = PulsarClient.builder()
                .serviceUrl(serviceUrl)
                .authentication(AuthenticationFactory.token(token))
                .tlsTrustCertsFilePath(trustCerts)
                .allowTlsInsecureConnection(false)
                .enableTlsHostnameVerification(true)
                .operationTimeout(OPERATION_TIMEOUT_SECONDS, TimeUnit.SECONDS)
                .connectionTimeout(CONNECTION_TIMEOUT_SECONDS, TimeUnit.SECONDS)
                .build()) {
            return expectDenied ? denied(client, topic) : roundtrip(client, topic, count);
        }
    }

    private static String denied(PulsarClient client, String topic) throws PulsarClientException {
        try (Producer<byte[]> producer = client.newProducer().topic(topic).create()) {
            throw new AssertionError("the producer on " + topic + " was created: " + producer.getProducerName());
        } catch (PulsarClientException.AuthorizationException expected) {
            return "DENIED " + expected.getMessage();
        }
    }

    private static String roundtrip(PulsarClient client, String topic, int count) throws PulsarClientException {
        String subscription = "java-" + UUID.randomUUID().toString().substring(0, 8);
        try (Consumer<byte[]> consumer = client.newConsumer().topic(topic).subscriptionName(subscription).subscribe();
                Producer<byte[]> producer = client.newProducer().topic(topic).create()) {
            List<String> sent = new ArrayList<>();
            for (int i = 0; i < count; i++) {
                String body = "java-" + i;
                producer.send(body.getBytes(StandardCharsets.UTF_8));
                sent.add(body);
            }
            List<String> received = new ArrayList<>();
            for (int i = 0; i < count; i++) {
                Message<byte[]> message = consumer.receive(RECEIVE_TIMEOUT_SECONDS, TimeUnit.SECONDS);
                if (message == null) {
                    throw new AssertionError("received " + received.size() + " of " + count + " messages: " + received);
                }
                received.add(new String(message.getValue(), StandardCharsets.UTF_8));
                consumer.acknowledge(message);
            }
            if (!received.equals(sent)) {
                throw new AssertionError("sent " + sent + " but received " + received);
            }
            return "OK " + count + " messages through " + topic;
        }
    }
}
