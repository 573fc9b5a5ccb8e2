package io.magnetar.tests.security;

import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import java.util.Set;

/**
 * Apache Pulsar's own Java code as a command line, for the Python tests that check Magnetar's
 * tokens and TLS listeners against it (tests/python/test_java_security.py), its client's
 * typed schemas against Magnetar's schema registry (tests/python/test_java_schema.py), and its
 * client against the rest of the protocol: pattern consumers, compaction and TableView, fencing,
 * CONSUMER_STATS, non-persistent topics and advertised listeners
 * (tests/python/test_java_protocol.py).
 *
 * <p>Exit codes: 0 when the outcome is the one asked for, 1 when it is not (a token refused, a
 * roundtrip that failed, a producer that was not denied), 2 for bad usage. What a test checks
 * goes to standard output; reasons go to standard error.
 */
public final class Main {
    private static final String USAGE = String.join("\n",
            "usage:",
            "  create-token --secret-key FILE --subject S [--expiry-seconds N]",
            "  create-token --private-key FILE --algorithm RS256|ES256 --subject S [--expiry-seconds N]",
            "  validate-token (--secret-key FILE | --public-key FILE [--algorithm RS256|ES256]) --token T",
            "  create-secret-key --output OUT",
            "  create-key-pair --algorithm RS256|ES256 --private-key OUT --public-key OUT",
            "  client-roundtrip --service-url pulsar+ssl://HOST:PORT --trust-certs CA.pem --token T",
            "                   --topic persistent://TENANT/NS/TOPIC [--count N] [--expect-denied]",
            "  schema-checks --service-url pulsar://HOST:PORT --topic-prefix persistent://TENANT/NS/PREFIX",
            "  protocol-checks --service-url pulsar://HOST:PORT --admin-url http://HOST:PORT",
            "                  --topic-prefix persistent://TENANT/NS/PREFIX",
            "  listener-check --service-url pulsar://HOST:PORT --listener NAME --topic T [--expect-fail]");

    private Main() {}

    public static void main(String[] args) {
        // Before any logger exists: Pulsar's client logs every connection at INFO.
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        System.setProperty("org.slf4j.simpleLogger.logFile", "System.err");
        if (args.length == 0) {
            System.err.println(USAGE);
            System.exit(2);
        }
        String command = args[0];
        List<String> rest = Arrays.asList(args).subList(1, args.length);
        int code;
        try {
            System.out.println(run(command, rest));
            code = 0;
        } catch (Options.UsageException error) {
            System.err.println(error.getMessage());
            System.err.println(USAGE);
            code = 2;
        } catch (AssertionError error) {
            System.err.println(command + " failed: " + error.getMessage());
            code = 1;
        } catch (Exception error) {
            System.err.println(command + " failed: " + error);
            code = 1;
        }
        // The client's threads are not all daemons; exit whatever they do.
        System.exit(code);
    }

    private static String run(String command, List<String> rest) throws Exception {
        switch (command) {
            case "create-token": {
                Options options = new Options(command, rest,
                        Set.of("--secret-key", "--private-key", "--algorithm", "--subject", "--expiry-seconds"), Set.of());
                String secretKey = options.optional("--secret-key");
                String privateKey = options.optional("--private-key");
                if ((secretKey == null) == (privateKey == null)) {
                    throw new Options.UsageException(command + ": give one of --secret-key and --private-key");
                }
                String expiry = options.optional("--expiry-seconds");
                return Tokens.create(secretKey, privateKey, options.optional("--algorithm", "RS256"),
                        options.required("--subject"), expiry == null ? null : Long.valueOf(expiry));
            }
            case "validate-token": {
                Options options = new Options(command, rest,
                        Set.of("--secret-key", "--public-key", "--algorithm", "--token"), Set.of());
                String secretKey = options.optional("--secret-key");
                String publicKey = options.optional("--public-key");
                if ((secretKey == null) == (publicKey == null)) {
                    throw new Options.UsageException(command + ": give one of --secret-key and --public-key");
                }
                return Tokens.validate(secretKey, publicKey, options.optional("--algorithm"), options.required("--token"));
            }
            case "create-secret-key": {
                Options options = new Options(command, rest, Set.of("--output"), Set.of());
                Tokens.createSecretKey(Path.of(options.required("--output")));
                return "OK";
            }
            case "create-key-pair": {
                Options options = new Options(command, rest,
                        Set.of("--algorithm", "--private-key", "--public-key"), Set.of());
                Tokens.createKeyPair(options.optional("--algorithm", "RS256"),
                        Path.of(options.required("--private-key")), Path.of(options.required("--public-key")));
                return "OK";
            }
            case "client-roundtrip": {
                Options options = new Options(command, rest,
                        Set.of("--service-url", "--trust-certs", "--token", "--topic", "--count"), Set.of("--expect-denied"));
                return ClientRoundtrip.run(options.required("--service-url"), options.required("--trust-certs"),
                        options.required("--token"), options.required("--topic"),
                        Integer.parseInt(options.optional("--count", "10")), options.flag("--expect-denied"));
            }
            case "schema-checks": {
                Options options = new Options(command, rest, Set.of("--service-url", "--topic-prefix"), Set.of());
                return SchemaChecks.run(options.required("--service-url"), options.required("--topic-prefix"));
            }
            case "protocol-checks": {
                Options options = new Options(command, rest,
                        Set.of("--service-url", "--admin-url", "--topic-prefix"), Set.of());
                return ProtocolChecks.run(options.required("--service-url"), options.required("--admin-url"),
                        options.required("--topic-prefix"));
            }
            case "listener-check": {
                Options options = new Options(command, rest,
                        Set.of("--service-url", "--listener", "--topic"), Set.of("--expect-fail"));
                return ProtocolChecks.listenerCheck(options.required("--service-url"), options.required("--listener"),
                        options.required("--topic"), options.flag("--expect-fail"));
            }
            default:
                throw new Options.UsageException("unknown command " + command);
        }
    }
}
