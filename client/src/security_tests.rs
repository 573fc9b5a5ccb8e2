//! End-to-end tests of the client's security against the fake broker: the credentials
//! CONNECT carries for each provider, AUTH_CHALLENGE answered on a live connection, refused
//! credentials, and TLS (trusted CA, wrong host name, insecure mode, mutual TLS) with
//! certificates made by rcgen for each test.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::error::error_chain;
use crate::fake_broker::{FakeBroker, Options};
use crate::{
    BasicAuthentication, Client, ClientConfig, ClientError, TlsAuthentication, TokenAuthentication, CLIENT_VERSION,
};

const TOPIC: &str = "persistent://public/default/my-topic";

async fn with_timeout<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future).await.expect("timed out")
}

fn config_with(authentication: impl crate::Authentication) -> ClientConfig {
    ClientConfig { authentication: Some(Arc::new(authentication)), ..ClientConfig::default() }
}

/// Connects, creates a producer and sends one message: the whole path works.
async fn produce_one(url: &str, config: ClientConfig) -> Result<Client, ClientError> {
    let client = with_timeout(Client::connect_with_config(url, config)).await?;
    let mut producer = with_timeout(client.producer("my-topic").create()).await?;
    with_timeout(producer.send("hello")).await?;
    Ok(client)
}

#[tokio::test]
async fn connect_carries_each_providers_method_and_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "file-token\n").expect("write");
    let cases: Vec<(ClientConfig, &str, &[u8])> = vec![
        (config_with(TokenAuthentication::new("static-token")), "token", b"static-token"),
        (config_with(TokenAuthentication::from_file(&token_file)), "token", b"file-token"),
        (config_with(TokenAuthentication::from_fn(|| Ok("function-token".into()))), "token", b"function-token"),
        (config_with(BasicAuthentication::new("alice", "wonderland")), "basic", b"alice:wonderland"),
    ];
    for (config, method, data) in cases {
        let broker = FakeBroker::start(Options::default()).await;
        produce_one(&broker.url, config).await.expect("works");
        let state = broker.state();
        let connect = &state.connects[0];
        assert_eq!(connect.auth_method_name.as_deref(), Some(method));
        assert_eq!(connect.auth_data.as_deref(), Some(data));
        let flags = connect.feature_flags.as_ref().expect("feature flags");
        assert_eq!(flags.supports_auth_refresh, Some(true), "brokers challenge only clients that say so");
    }

    // Without authentication, CONNECT carries none.
    let broker = FakeBroker::start(Options::default()).await;
    produce_one(&broker.url, ClientConfig::default()).await.expect("works");
    assert_eq!(broker.state().connects[0].auth_method_name, None);
    assert_eq!(broker.state().connects[0].auth_data, None);
}

/// A function provider handing out a new token at every call: token-0, token-1, ...
fn counting_tokens() -> (TokenAuthentication, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let auth = TokenAuthentication::from_fn(move || Ok(format!("token-{}", counter.fetch_add(1, Ordering::SeqCst))));
    (auth, calls)
}

#[tokio::test]
async fn auth_challenge_is_answered_with_fresh_data_and_the_producer_keeps_working() {
    let broker = FakeBroker::start(Options::default()).await;
    let (auth, calls) = counting_tokens();
    let client = with_timeout(Client::connect_with_config(&broker.url, config_with(auth))).await.expect("connect");
    let mut producer = with_timeout(client.producer("my-topic").create()).await.expect("producer");
    with_timeout(producer.send("before")).await.expect("send");

    broker.challenge();
    broker.eventually("an AUTH_RESPONSE", |state| !state.auth_responses.is_empty()).await;
    {
        let state = broker.state();
        let response = &state.auth_responses[0];
        let data = response.response.as_ref().expect("auth data");
        assert_eq!(data.auth_method_name.as_deref(), Some("token"));
        assert_eq!(data.auth_data.as_deref(), Some(&b"token-1"[..]), "fresh data, not the CONNECT's token-0");
        assert_eq!(response.client_version.as_deref(), Some(CLIENT_VERSION));
        assert_eq!(response.protocol_version, Some(magnetar_proto::PROTOCOL_VERSION));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Same connection, same producer.
    with_timeout(producer.send("after")).await.expect("send after the challenge");
    broker.challenge();
    broker.eventually("a second AUTH_RESPONSE", |state| state.auth_responses.len() == 2).await;
    with_timeout(producer.send("after again")).await.expect("send after the second challenge");
    let state = broker.state();
    assert_eq!(state.connections, 1, "the connection was kept");
    assert_eq!(state.entries[TOPIC].len(), 3);
}

#[tokio::test]
async fn refused_connect_is_a_clear_authentication_error() {
    let options = Options { accept_auth: Some(|_, data| data == b"good"), ..Options::default() };
    let broker = FakeBroker::start(options).await;
    let config = ClientConfig {
        // Long enough that a retry loop would show as a timeout.
        operation_timeout: Duration::from_secs(30),
        ..config_with(TokenAuthentication::new("bad"))
    };
    let error = with_timeout(Client::connect_with_config(&broker.url, config)).await.expect_err("refused");
    match &error {
        ClientError::AuthenticationFailed { method, message, .. } => {
            assert_eq!(method, "token");
            assert!(message.contains("invalid token"), "{message}");
        }
        other => panic!("expected AuthenticationFailed, got {other}"),
    }
    assert_eq!(error.server_code(), Some(magnetar_proto::pulsar::ServerError::AuthenticationError));
    assert!(!error_chain(&error).contains("bad"), "the token is not in the error: {error}");
    assert_eq!(broker.state().connections, 1, "no retry");
}

#[tokio::test]
async fn refused_refresh_closes_the_connection_and_new_connections_report_it() {
    // Only the first token is good: the refresh (token-1) is refused, and so is every later CONNECT.
    let options = Options { accept_auth: Some(|_, data| data == b"token-0"), ..Options::default() };
    let broker = FakeBroker::start(options).await;
    let (auth, _) = counting_tokens();
    let client = with_timeout(Client::connect_with_config(&broker.url, config_with(auth))).await.expect("connect");
    broker.challenge();
    broker.eventually("the refused AUTH_RESPONSE", |state| state.auth_responses.len() == 1).await;
    let error = with_timeout(async {
        loop {
            match client.producer("my-topic").create().await {
                // The old connection may still be in the pool for a moment.
                Err(ClientError::Disconnected { .. }) => tokio::time::sleep(Duration::from_millis(10)).await,
                other => break other,
            }
        }
    })
    .await
    .expect_err("refused");
    assert!(matches!(error, ClientError::AuthenticationFailed { .. }), "{error}");
}

/// A CA and certificates it signs, written as PEM files in a temp dir.
struct TestPki {
    dir: tempfile::TempDir,
    ca: Issuer<'static, KeyPair>,
    ca_certificate: CertificateDer<'static>,
}

/// A certificate and key issued by a [`TestPki`].
struct Leaf {
    certificate_file: PathBuf,
    key_file: PathBuf,
    certificate: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl TestPki {
    fn new() -> TestPki {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "Magnetar test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let certificate = params.self_signed(&key).expect("CA certificate");
        std::fs::write(dir.path().join("ca.pem"), certificate.pem()).expect("write");
        TestPki { dir, ca: Issuer::new(params, key), ca_certificate: certificate.der().clone() }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate for `names` (DNS names or IPs), common name `name`.
    fn issue(&self, name: &str, names: &[&str]) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let certificate = params.signed_by(&key, &self.ca).expect("certificate");
        let certificate_file = self.dir.path().join(format!("{name}.cert.pem"));
        let key_file = self.dir.path().join(format!("{name}.key.pem"));
        std::fs::write(&certificate_file, certificate.pem()).expect("write");
        std::fs::write(&key_file, key.serialize_pem()).expect("write");
        Leaf {
            certificate_file,
            key_file,
            certificate: certificate.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// A broker serving `leaf`, asking for a client certificate from this CA when
    /// `client_auth`.
    fn server_config(&self, leaf: &Leaf, client_auth: bool) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = if client_auth {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca_certificate.clone()).expect("root");
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().expect("verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(builder.with_single_cert(vec![leaf.certificate.clone()], leaf.key.clone_key()).expect("server config"))
    }
}

async fn tls_broker(pki: &TestPki, server_names: &[&str], client_auth: bool) -> FakeBroker {
    let leaf = pki.issue("broker", server_names);
    FakeBroker::start(Options { tls: Some(pki.server_config(&leaf, client_auth)), ..Options::default() }).await
}

fn trusting(ca_file: &Path) -> ClientConfig {
    ClientConfig { tls_trust_certs_file_path: Some(ca_file.to_owned()), ..ClientConfig::default() }
}

#[tokio::test]
async fn tls_with_the_ca_file_works_and_lookups_use_the_tls_url() {
    let pki = TestPki::new();
    let broker = tls_broker(&pki, &["localhost"], false).await;
    assert!(broker.url.starts_with("pulsar+ssl://localhost:"));
    let client = produce_one(&broker.url, trusting(&pki.ca_file())).await.expect("TLS works");
    // The fake's plain URL leads nowhere; the producer got there through the TLS one.
    let topic = crate::TopicName::parse("my-topic").expect("topic");
    let owner = client.lookup(&topic).await.expect("lookup");
    assert!(owner.is_tls(), "{owner}");
    assert_eq!(owner.to_string(), broker.url);
    assert_eq!(broker.state().entries[TOPIC].len(), 1);
}

#[tokio::test]
async fn tls_refuses_a_certificate_for_another_name_unless_hostname_verification_is_off() {
    let pki = TestPki::new();
    let broker = tls_broker(&pki, &["broker.elsewhere.example"], false).await;
    let error = produce_one(&broker.url, trusting(&pki.ca_file())).await.expect_err("wrong name");
    assert!(matches!(error, ClientError::TlsHandshake { .. }), "{}", error_chain(&error));
    assert!(error_chain(&error).to_lowercase().contains("name"), "{}", error_chain(&error));

    let config = ClientConfig { tls_hostname_verification: false, ..trusting(&pki.ca_file()) };
    produce_one(&broker.url, config).await.expect("the chain is still trusted");
}

#[tokio::test]
async fn tls_refuses_an_untrusted_certificate_unless_insecure_connections_are_allowed() {
    let broker_pki = TestPki::new();
    let other_pki = TestPki::new();
    let broker = tls_broker(&broker_pki, &["localhost"], false).await;
    let error = produce_one(&broker.url, trusting(&other_pki.ca_file())).await.expect_err("untrusted");
    assert!(matches!(error, ClientError::TlsHandshake { .. }), "{}", error_chain(&error));

    let config = ClientConfig { tls_allow_insecure_connection: true, ..ClientConfig::default() };
    produce_one(&broker.url, config).await.expect("insecure mode accepts any certificate");
}

#[tokio::test]
async fn mutual_tls_sends_the_client_certificate_of_tls_authentication() {
    let pki = TestPki::new();
    let broker = tls_broker(&pki, &["localhost"], true).await;
    let client_leaf = pki.issue("client-role", &[]);
    let config = ClientConfig {
        authentication: Some(Arc::new(TlsAuthentication::new(&client_leaf.certificate_file, &client_leaf.key_file))),
        ..trusting(&pki.ca_file())
    };
    produce_one(&broker.url, config).await.expect("mutual TLS works");
    let state = broker.state();
    assert_eq!(state.client_certificates, [client_leaf.certificate.to_vec()]);
    assert_eq!(state.connects[0].auth_method_name.as_deref(), Some("tls"));
    assert_eq!(state.connects[0].auth_data.as_deref(), Some(&b""[..]));
}

#[tokio::test]
async fn mutual_tls_from_the_config_files_and_without_a_certificate() {
    let pki = TestPki::new();
    let broker = tls_broker(&pki, &["localhost"], true).await;
    let client_leaf = pki.issue("client-role", &[]);
    let config = ClientConfig {
        tls_certificate_file_path: Some(client_leaf.certificate_file.clone()),
        tls_key_file_path: Some(client_leaf.key_file.clone()),
        ..trusting(&pki.ca_file())
    };
    produce_one(&broker.url, config).await.expect("mutual TLS works");
    assert_eq!(broker.state().client_certificates, [client_leaf.certificate.to_vec()]);

    // The broker refuses a client without a certificate; the client reports an error rather
    // than hanging or retrying.
    let error = produce_one(&broker.url, trusting(&pki.ca_file())).await.expect_err("no client certificate");
    assert!(
        matches!(error, ClientError::TlsHandshake { .. } | ClientError::Disconnected { .. }),
        "{}",
        error_chain(&error)
    );
}

#[tokio::test]
async fn bad_tls_files_are_reported_before_connecting() {
    let pki = TestPki::new();
    let broker = tls_broker(&pki, &["localhost"], false).await;
    let missing = trusting(Path::new("/nonexistent/ca.pem"));
    let error = Client::connect_with_config(&broker.url, missing).await.expect_err("missing CA file");
    assert!(matches!(error, ClientError::ReadFile { .. }), "{error}");

    let not_pem = pki.dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").expect("write");
    let error = Client::connect_with_config(&broker.url, trusting(&not_pem)).await.expect_err("no certificate");
    assert!(matches!(error, ClientError::TlsConfig { .. }), "{error}");

    let leaf = pki.issue("client-role", &[]);
    let config = ClientConfig {
        authentication: Some(Arc::new(TlsAuthentication::new(&leaf.certificate_file, &leaf.certificate_file))),
        ..trusting(&pki.ca_file())
    };
    let error = Client::connect_with_config(&broker.url, config).await.expect_err("a certificate is no key");
    assert!(matches!(error, ClientError::TlsConfig { .. }), "{error}");
    assert_eq!(broker.state().connections, 0, "nothing was attempted");
}

#[tokio::test]
async fn tls_carries_pipelined_large_messages_both_ways() {
    // Enough to fill the socket buffers, so TLS writes that leave bytes in the session (and
    // need the connection's flush) happen.
    let pki = TestPki::new();
    let broker = tls_broker(&pki, &["localhost"], false).await;
    let client =
        with_timeout(Client::connect_with_config(&broker.url, trusting(&pki.ca_file()))).await.expect("connect");
    let mut producer = with_timeout(client.producer("my-topic").create()).await.expect("producer");
    let body = vec![b'x'; 64 * 1024];
    let mut receipts = Vec::new();
    for _ in 0..200 {
        receipts
            .push(with_timeout(producer.send_async(crate::ProducerMessage::new(body.clone()))).await.expect("queue"));
    }
    for receipt in receipts {
        with_timeout(receipt).await.expect("receipt");
    }
    let mut consumer =
        with_timeout(client.consumer("my-topic", "sub").initial_position(crate::InitialPosition::Earliest).subscribe())
            .await
            .expect("subscribe");
    for _ in 0..200 {
        let message = with_timeout(consumer.receive()).await.expect("receive");
        assert_eq!(message.payload.len(), body.len());
    }
}

#[tokio::test]
async fn tls_connection_keeps_up_with_a_slow_reader() {
    // The broker reads slowly, so the client's socket stays full and TLS writes leave bytes
    // in the session for the connection's flush (stream.rs) to push out. Whether the very last
    // write is one of those depends on timing, so this cannot prove the flush is needed; it
    // checks that backpressure over TLS loses and delays nothing.
    let pki = TestPki::new();
    let broker = tls_broker(&pki, &["localhost"], false).await;
    let client =
        with_timeout(Client::connect_with_config(&broker.url, trusting(&pki.ca_file()))).await.expect("connect");
    let mut producer =
        with_timeout(client.producer("my-topic").max_pending_messages(1000).create()).await.expect("producer");
    broker.state().slow_reads = true;
    let body = vec![b'x'; 8 * 1024];
    let mut receipts = Vec::new();
    for _ in 0..500 {
        receipts
            .push(with_timeout(producer.send_async(crate::ProducerMessage::new(body.clone()))).await.expect("queue"));
    }
    for receipt in receipts {
        with_timeout(receipt).await.expect("receipt");
    }
    assert_eq!(broker.state().entries[TOPIC].len(), 500);
}
