//! TLS and authentication with the Rust `pulsar` crate, a client nobody here wrote, against
//! `magnetar standalone` configured with TLS (certificates made here with rcgen), the token
//! and basic providers and authorization. (The crate has no client-certificate identity, so
//! TLS certificate authentication is tested with the Python client.)

use std::path::Path;
use std::time::Duration;

use futures::TryStreamExt;
use magnetar_tests::{free_port, http_with_headers, Standalone};
use pulsar::consumer::InitialPosition;
use pulsar::{Authentication, Consumer, ConsumerOptions, OperationRetryOptions, Pulsar, TokioExecutor};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

struct Secure {
    standalone: Standalone,
    tls_port: u16,
    dir: tempfile::TempDir,
    secret: std::path::PathBuf,
}

fn magnetar_tokens(args: &[&str]) -> anyhow::Result<String> {
    let output = std::process::Command::new(magnetar_tests::binary("magnetar")?).arg("tokens").args(args).output()?;
    anyhow::ensure!(output.status.success(), "magnetar tokens {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

impl Secure {
    fn token(&self, role: &str) -> anyhow::Result<String> {
        magnetar_tokens(&["create", "--subject", role, "--secret-key", &format!("file://{}", self.secret.display())])
    }

    fn ca(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    async fn admin(&self, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<()> {
        let auth = format!("Bearer {}", self.token("admin")?);
        let (status, answer) =
            http_with_headers(self.standalone.http_port, method, path, body, &[("Authorization", &auth)]).await?;
        anyhow::ensure!(status == 204 || status == 200, "{method} {path}: {status} {answer}");
        Ok(())
    }

    async fn client(&self, auth: Authentication) -> Result<Pulsar<TokioExecutor>, pulsar::Error> {
        let no_retries = OperationRetryOptions { max_retries: Some(0), ..OperationRetryOptions::default() };
        let ca = std::fs::read(self.ca()).unwrap_or_default();
        Pulsar::builder(format!("pulsar+ssl://localhost:{}", self.tls_port), TokioExecutor)
            .with_certificate_chain(ca)
            .with_tls_hostname_verification_enabled(true)
            .with_auth(auth)
            .with_operation_retry_options(no_retries)
            .build()
            .await
    }
}

fn write_pki(dir: &Path) -> anyhow::Result<()> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "magnetar-rust-test-ca");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &issuer)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    std::fs::write(dir.join("broker.pem"), cert.pem())?;
    std::fs::write(dir.join("broker.key"), key.serialize_pem())?;
    // A client certificate whose common name is the role `cert-app`.
    let client_key = KeyPair::generate()?;
    let mut client_params = CertificateParams::new(Vec::<String>::new())?;
    client_params.distinguished_name.push(DnType::CommonName, "cert-app");
    let client_cert = client_params.signed_by(&client_key, &issuer)?;
    std::fs::write(dir.join("client.pem"), client_cert.pem())?;
    std::fs::write(dir.join("client.key"), client_key.serialize_pem())?;
    Ok(())
}

async fn secure_standalone() -> anyhow::Result<Secure> {
    let dir = tempfile::tempdir()?;
    write_pki(dir.path())?;
    let secret = dir.path().join("secret.key");
    magnetar_tokens(&["create-secret-key", "--output", secret.to_str().unwrap_or_default()])?;
    // The password "rust-password" as `openssl passwd -apr1 -salt rUsTsAlT` writes it.
    let apr1 = std::process::Command::new("openssl")
        .args(["passwd", "-apr1", "-salt", "rUsTsAlT", "rust-password"])
        .output()?;
    anyhow::ensure!(apr1.status.success(), "openssl passwd failed");
    std::fs::write(dir.path().join("htpasswd"), format!("rustuser:{}", String::from_utf8(apr1.stdout)?))?;
    let tls_port = free_port()?;
    let config = dir.path().join("broker.toml");
    let d = dir.path().display();
    std::fs::write(
        &config,
        format!(
            "broker_service_port_tls = {tls_port}\n\
             tls_certificate_file_path = \"{d}/broker.pem\"\n\
             tls_key_file_path = \"{d}/broker.key\"\n\
             authentication_enabled = true\n\
             tls_trust_certs_file_path = \"{d}/ca.pem\"\n\
             authentication_providers = [\"token\", \"basic\", \"tls\"]\n\
             token_secret_key = \"file://{d}/secret.key\"\n\
             basic_auth_conf = \"{d}/htpasswd\"\n\
             authorization_enabled = true\n\
             super_user_roles = [\"admin\"]\n\
             authentication_refresh_check_seconds = 1\n"
        ),
    )?;
    let standalone = Standalone::start_with_args(&["--config", config.to_str().unwrap_or_default()]).await?;
    Ok(Secure { standalone, tls_port, dir, secret })
}

async fn roundtrip(client: &Pulsar<TokioExecutor>, topic: &str) -> anyhow::Result<()> {
    let mut consumer: Consumer<String, TokioExecutor> = client
        .consumer()
        .with_topic(topic)
        .with_subscription("s")
        .with_options(ConsumerOptions::default().with_initial_position(InitialPosition::Earliest))
        .build()
        .await?;
    let mut producer = client.producer().with_topic(topic).build().await?;
    for i in 0..5 {
        producer.send_non_blocking(format!("m{i}")).await?.await?;
    }
    for i in 0..5 {
        let message = tokio::time::timeout(Duration::from_secs(10), consumer.try_next())
            .await??
            .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
        assert_eq!(message.deserialize()?, format!("m{i}"));
        consumer.ack(&message).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_over_tls_with_token_and_basic_auth() -> anyhow::Result<()> {
    let secure = secure_standalone().await?;
    let grants =
        r#"{"auth_policies":{"namespace_auth":{"app":["produce","consume"],"rustuser":["produce","consume"]}}}"#;
    // With authentication on, tenant `public` is left to an administrator.
    secure.admin("PUT", "/admin/v2/tenants/public", Some(r#"{"allowedClusters":["standalone"]}"#)).await?;
    secure.admin("PUT", "/admin/v2/namespaces/public/secure", Some(grants)).await?;

    let token = Authentication { name: "token".into(), data: secure.token("app")?.into_bytes() };
    let client = secure.client(token).await?;
    roundtrip(&client, "persistent://public/secure/tokens").await?;
    // The same role without a grant elsewhere: AuthorizationError.
    let denied = client.producer().with_topic("persistent://public/default/elsewhere").build().await;
    let error = format!("{:?}", denied.err().ok_or_else(|| anyhow::anyhow!("a producer without permission"))?);
    assert!(error.contains("AuthorizationError"), "{error}");

    let basic = Authentication { name: "basic".into(), data: b"rustuser:rust-password".to_vec() };
    roundtrip(&secure.client(basic).await?, "persistent://public/secure/basic").await?;

    // Refused credentials: the broker answers CONNECT with AuthenticationError and closes (the
    // crate reports a fatal connection error); its log names the reason.
    for bad in [
        Authentication { name: "token".into(), data: b"not.a.token".to_vec() },
        Authentication { name: "basic".into(), data: b"rustuser:wrong".to_vec() },
    ] {
        let refused = match secure.client(bad).await {
            Err(error) => Some(error),
            Ok(client) => client.producer().with_topic("persistent://public/secure/x").build().await.err(),
        };
        assert!(refused.is_some(), "refused credentials cannot produce");
    }
    let log = secure.standalone.log();
    assert!(log.contains("CONNECT refused") && log.contains("invalid token"), "the broker logs the refusal");
    assert!(log.contains("wrong user or password for \"rustuser\""), "{log}");
    assert!(!log.contains("rust-password"), "no password in the log");
    Ok(())
}

/// A raw CONNECT with a token and, if `refreshes`, the flag saying the client answers
/// AUTH_CHALLENGE.
async fn raw_token_connect(port: u16, token: &str, refreshes: bool) -> anyhow::Result<magnetar_tests::RawConn> {
    use futures::SinkExt;
    use magnetar_proto::frame::{Frame, FrameCodec};
    use magnetar_proto::pulsar::{self as pb, base_command::Type};
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut conn = tokio_util::codec::Framed::new(stream, FrameCodec::default());
    let mut connect = magnetar_proto::command::connect("raw", Some("token".into()), Some(token.as_bytes().to_vec()));
    if let Some(body) = connect.connect.as_mut() {
        body.feature_flags = Some(pb::FeatureFlags { supports_auth_refresh: Some(refreshes), ..Default::default() });
    }
    conn.send(Frame::simple(connect)).await?;
    let answer = magnetar_tests::raw_receive(&mut conn).await?;
    anyhow::ensure!(answer.command_type() == Some(Type::Connected), "expected CONNECTED, got {answer:?}");
    Ok(conn)
}

/// Waits for the next frame other than PING/PONG; None if the broker closed the connection.
async fn next_command(conn: &mut magnetar_tests::RawConn) -> anyhow::Result<Option<magnetar_proto::frame::Frame>> {
    use futures::StreamExt;
    use magnetar_proto::pulsar::base_command::Type;
    loop {
        match tokio::time::timeout(Duration::from_secs(8), conn.next()).await {
            Err(_) => anyhow::bail!("nothing within 8 s"),
            Ok(None) | Ok(Some(Err(_))) => return Ok(None),
            Ok(Some(Ok(frame))) if matches!(frame.command_type(), Some(Type::Ping | Type::Pong)) => continue,
            Ok(Some(Ok(frame))) => return Ok(Some(frame)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_challenged_refreshed_or_the_connection_closed() -> anyhow::Result<()> {
    use futures::SinkExt;
    use magnetar_proto::frame::Frame;
    use magnetar_proto::pulsar::{self as pb, base_command::Type, BaseCommand};
    let secure = secure_standalone().await?;
    let secret = format!("file://{}", secure.secret.display());
    let short =
        |role: &str| magnetar_tokens(&["create", "--subject", role, "--secret-key", &secret, "--expiry-time", "2s"]);
    let port = secure.standalone.pulsar_port;

    // A client that refreshes: challenged after expiry, answers with a fresh token of the same
    // role, and is challenged again when that one expires; the connection stays.
    let mut conn = raw_token_connect(port, &short("app")?, true).await?;
    for _ in 0..2 {
        let frame = next_command(&mut conn).await?.ok_or_else(|| anyhow::anyhow!("closed instead of challenged"))?;
        assert_eq!(frame.command_type(), Some(Type::AuthChallenge), "{frame:?}");
        let response = BaseCommand {
            command_type: Type::AuthResponse as i32,
            auth_response: Some(pb::CommandAuthResponse {
                client_version: Some("raw".into()),
                response: Some(pb::AuthData {
                    auth_method_name: Some("token".into()),
                    auth_data: Some(short("app")?.into_bytes()),
                }),
                protocol_version: Some(magnetar_proto::PROTOCOL_VERSION),
            }),
            ..Default::default()
        };
        conn.send(Frame::simple(response)).await?;
    }

    // Fresh credentials of another role: closed.
    let mut conn = raw_token_connect(port, &short("app")?, true).await?;
    let frame = next_command(&mut conn).await?.ok_or_else(|| anyhow::anyhow!("closed instead of challenged"))?;
    assert_eq!(frame.command_type(), Some(Type::AuthChallenge));
    let other = BaseCommand {
        command_type: Type::AuthResponse as i32,
        auth_response: Some(pb::CommandAuthResponse {
            response: Some(pb::AuthData {
                auth_method_name: Some("token".into()),
                auth_data: Some(secure.token("someone-else")?.into_bytes()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    conn.send(Frame::simple(other)).await?;
    assert!(next_command(&mut conn).await?.is_none(), "a changed role closes the connection");

    // A client that did not say it refreshes: closed once its token expired.
    let mut conn = raw_token_connect(port, &short("app")?, false).await?;
    assert!(next_command(&mut conn).await?.is_none(), "closed at expiry, no challenge");
    Ok(())
}

/// Magnetar's own client against the broker: TLS with a client certificate as its identity,
/// and a token from a function that the client calls again when the broker challenges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_magnetar_client_with_a_certificate_and_a_refreshed_token() -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use magnetar_client::{Client, ClientConfig, InitialPosition, TlsAuthentication, TokenAuthentication};
    let secure = secure_standalone().await?;
    secure.admin("PUT", "/admin/v2/tenants/public", Some(r#"{"allowedClusters":["standalone"]}"#)).await?;
    let grants =
        r#"{"auth_policies":{"namespace_auth":{"cert-app":["produce","consume"],"fn-app":["produce","consume"]}}}"#;
    secure.admin("PUT", "/admin/v2/namespaces/public/own", Some(grants)).await?;
    let url = format!("pulsar+ssl://localhost:{}", secure.tls_port);
    let dir = secure.dir.path();

    let config = ClientConfig {
        tls_trust_certs_file_path: Some(secure.ca()),
        authentication: Some(Arc::new(TlsAuthentication::new(dir.join("client.pem"), dir.join("client.key")))),
        ..ClientConfig::default()
    };
    let client = Client::connect_with_config(&url, config).await?;
    let topic = "persistent://public/own/cert";
    let mut consumer = client.consumer(topic, "s").initial_position(InitialPosition::Earliest).subscribe().await?;
    let mut producer = client.producer(topic).create().await?;
    producer.send("by certificate").await?;
    let message = tokio::time::timeout(Duration::from_secs(10), consumer.receive()).await??;
    assert_eq!(&message.payload[..], b"by certificate");
    consumer.ack(&message).await?;
    client.close();

    // Tokens living 2 s, the broker checking every second: the connection is challenged and
    // the function asked again; sending goes on throughout.
    let secret = format!("file://{}", secure.secret.display());
    let issued = Arc::new(AtomicUsize::new(0));
    let counter = issued.clone();
    let supplier = move || {
        counter.fetch_add(1, Ordering::SeqCst);
        magnetar_tokens(&["create", "--subject", "fn-app", "--secret-key", &secret, "--expiry-time", "2s"]).map_err(
            |error| magnetar_client::ClientError::AuthenticationData {
                method: "token".into(),
                reason: error.to_string(),
            },
        )
    };
    let config = ClientConfig {
        tls_trust_certs_file_path: Some(secure.ca()),
        authentication: Some(Arc::new(TokenAuthentication::from_fn(supplier))),
        ..ClientConfig::default()
    };
    let client = Client::connect_with_config(&url, config).await?;
    let topic = "persistent://public/own/refreshed";
    let mut consumer = client.consumer(topic, "s").initial_position(InitialPosition::Earliest).subscribe().await?;
    let mut producer = client.producer(topic).create().await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    let mut sent = 0;
    while std::time::Instant::now() < deadline {
        producer.send(format!("m{sent}")).await?;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in 0..sent {
        let message = tokio::time::timeout(Duration::from_secs(10), consumer.receive()).await??;
        assert_eq!(&message.payload[..], format!("m{n}").as_bytes());
        consumer.ack(&message).await?;
    }
    assert!(issued.load(Ordering::SeqCst) >= 3, "the token was asked for again on challenges");
    assert!(!secure.standalone.log().contains("credentials expired and not refreshed"));
    client.close();
    Ok(())
}
