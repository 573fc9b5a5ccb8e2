package io.magnetar.tests.security;

import io.jsonwebtoken.SignatureAlgorithm;
import io.jsonwebtoken.security.Keys;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.Key;
import java.security.KeyPair;
import java.util.Date;
import java.util.Optional;
import java.util.Properties;
import javax.naming.AuthenticationException;
import org.apache.pulsar.broker.ServiceConfiguration;
import org.apache.pulsar.broker.authentication.AuthenticationDataCommand;
import org.apache.pulsar.broker.authentication.AuthenticationProvider;
import org.apache.pulsar.broker.authentication.AuthenticationProviderToken;
import org.apache.pulsar.broker.authentication.utils.AuthTokenUtils;

/**
 * Keys and tokens made and checked by Pulsar's own broker code, not by a re-implementation:
 * {@link AuthTokenUtils} is what {@code pulsar tokens} makes keys and tokens with, and
 * {@link AuthenticationProviderToken} is the provider a Pulsar broker checks a CONNECT's token
 * with, configured through the same {@code tokenSecretKey}, {@code tokenPublicKey} and
 * {@code tokenPublicAlg} settings as in broker.conf.
 *
 * <p>Keys are in Pulsar's formats: a secret key is the raw bytes, a private key PKCS#8 DER, a
 * public key X.509 SubjectPublicKeyInfo DER. A key argument is a path, or a {@code file:} or
 * {@code data:} URL as Pulsar's settings take them.
 *
 * <p>jjwt deprecates {@link SignatureAlgorithm} and {@code Keys.keyPairFor}, but Pulsar 4.2.4's
 * AuthTokenUtils and {@code pulsar tokens} still use them, so we do too.
 */
@SuppressWarnings("deprecation")
final class Tokens {
    private Tokens() {}

    /** A path becomes a {@code file://} URL; URLs (and base64, which Pulsar also takes) pass. */
    static String keyUrl(String argument) {
        if (argument.startsWith("file:") || argument.startsWith("data:")) {
            return argument;
        }
        Path path = Path.of(argument);
        return Files.exists(path) ? "file://" + path.toAbsolutePath() : argument;
    }

    /**
     * {@code create-token}: a token for {@code subject} signed with a secret key (HS256, HS384
     * or HS512 by the key's length, as jjwt picks) or a private key of {@code algorithm}'s
     * family, expiring {@code expirySeconds} from now if given (negative: already expired).
     */
    static String create(String secretKey, String privateKey, String algorithm, String subject, Long expirySeconds)
            throws IOException {
        Key signingKey;
        if (secretKey != null) {
            signingKey = AuthTokenUtils.decodeSecretKey(AuthTokenUtils.readKeyFromUrl(keyUrl(secretKey)));
        } else {
            byte[] der = AuthTokenUtils.readKeyFromUrl(keyUrl(privateKey));
            signingKey = AuthTokenUtils.decodePrivateKey(der, SignatureAlgorithm.forName(algorithm));
        }
        Optional<Date> expiry = Optional.ofNullable(expirySeconds)
                .map(seconds -> new Date(System.currentTimeMillis() + seconds * 1000));
        return AuthTokenUtils.createToken(signingKey, subject, expiry);
    }

    /**
     * {@code validate-token}: the role a Pulsar broker configured with this key gives the
     * token; throws {@link AuthenticationException} with the provider's reason if it refuses.
     */
    static String validate(String secretKey, String publicKey, String algorithm, String token)
            throws IOException, AuthenticationException {
        Properties settings = new Properties();
        if (secretKey != null) {
            settings.setProperty("tokenSecretKey", keyUrl(secretKey));
        } else {
            settings.setProperty("tokenPublicKey", keyUrl(publicKey));
            if (algorithm != null) {
                settings.setProperty("tokenPublicAlg", algorithm);
            }
        }
        ServiceConfiguration config = new ServiceConfiguration();
        config.setProperties(settings);
        try (AuthenticationProviderToken provider = new AuthenticationProviderToken()) {
            provider.initialize(AuthenticationProvider.Context.builder().config(config).build());
            return provider.authenticate(new AuthenticationDataCommand(token));
        }
    }

    /** {@code create-secret-key}: as {@code pulsar tokens create-secret-key} makes one (HS256). */
    static void createSecretKey(Path out) throws IOException {
        Files.write(out, AuthTokenUtils.createSecretKey(SignatureAlgorithm.HS256).getEncoded());
    }

    /** {@code create-key-pair}: as {@code pulsar tokens create-key-pair} makes and writes one. */
    static void createKeyPair(String algorithm, Path privateOut, Path publicOut) throws IOException {
        KeyPair pair = Keys.keyPairFor(SignatureAlgorithm.forName(algorithm));
        Files.write(privateOut, pair.getPrivate().getEncoded());
        Files.write(publicOut, pair.getPublic().getEncoded());
    }
}
