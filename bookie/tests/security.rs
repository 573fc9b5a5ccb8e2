//! Bookies that refuse callers without a valid token, and bookies that speak TLS, against
//! real bookie servers in this process (gRPC on loopback, a LocalStore for metadata): a client
//! without a token, with a token signed by another key, with an expired token or with a role
//! the bookie does not allow is refused before anything is stored; a broker's token is
//! accepted, over plain gRPC and over TLS with the CA that signed the bookie.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use magnetar_auth::credential::TokenParam;
use magnetar_auth::token::{create_secret_key, create_token, SigningKey};
use magnetar_bookie::client::{self, metadata, Bookies, LedgerConfig, LedgerWriter};
use magnetar_bookie::config::BookieAuthConfig;
use magnetar_bookie::node::BookieNode;
use magnetar_bookie::registration;
use magnetar_bookie::security::ClientSecurity;
use magnetar_bookie::{BookieConfig, BookieError, BookieServer, EntryId};
use magnetar_meta::testing::write_test_pki;
use magnetar_meta::{LocalStore, MetadataStore};
use tempfile::TempDir;

const ONE: LedgerConfig = LedgerConfig { ensemble_size: 1, write_quorum: 1, ack_quorum: 1 };

struct Setup {
    dir: TempDir,
    meta: Arc<dyn MetadataStore>,
}

impl Setup {
    fn new() -> anyhow::Result<Setup> {
        let dir = TempDir::new()?;
        let meta: Arc<dyn MetadataStore> = Arc::new(LocalStore::open(&dir.path().join("meta"))?);
        std::fs::write(dir.path().join("secret.key"), create_secret_key())?;
        std::fs::write(dir.path().join("other.key"), create_secret_key())?;
        Ok(Setup { dir, meta })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A token for `role` signed with the key file `key`.
    fn token(&self, key: &str, role: &str, expiry: Option<Duration>) -> anyhow::Result<String> {
        let key = SigningKey::secret(&format!("file://{}", self.path(key).display()))?;
        Ok(create_token(&key, role, expiry)?)
    }

    fn auth(&self) -> BookieAuthConfig {
        BookieAuthConfig {
            enabled: true,
            token_secret_key: Some(format!("file://{}", self.path("secret.key").display())),
            allowed_roles: vec!["broker".to_owned()],
            ..BookieAuthConfig::default()
        }
    }

    async fn bookie(&self, mut config: BookieConfig) -> anyhow::Result<BookieNode> {
        config.autorecovery.enabled = false;
        config.http_listen = "127.0.0.1:0".to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Ok(BookieNode::start(&config, self.meta.clone(), listener, "127.0.0.1").await?)
    }

    fn client(&self, token: Option<String>) -> Bookies {
        let mut security = ClientSecurity::default();
        if let Some(token) = token {
            security = security.with_token(TokenParam::Inline(token));
        }
        Bookies::secured(self.meta.clone(), security)
    }
}

fn payload(entry_id: u64) -> Bytes {
    Bytes::from(format!("secured entry {entry_id}"))
}

/// Writes ten entries through `bookies` and reads them back.
async fn write_and_read(bookies: &Bookies) -> anyhow::Result<()> {
    let writer = LedgerWriter::create(bookies, ONE, None).await?;
    let mut answers = Vec::new();
    for entry_id in 0..10 {
        answers.push(writer.add(payload(entry_id)).await?);
    }
    for (entry_id, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer.await??, entry_id as u64);
    }
    writer.close().await?;
    let (ledger, _) = metadata::read(bookies.meta().as_ref(), writer.ledger_id()).await?.context("metadata")?;
    let entries = client::read_entries(bookies, &ledger, EntryId(0), EntryId(9), 100, 1 << 20).await?;
    assert_eq!(entries.len(), 10);
    for (EntryId(entry_id), data) in entries {
        assert_eq!(data, payload(entry_id));
    }
    Ok(())
}

/// The error of dialing `bookie_id` through `bookies` (the add stream opens on dial, so a
/// refused token fails the dial).
async fn dial_error(bookies: &Bookies, bookie_id: &str) -> String {
    match bookies.get(bookie_id).await {
        Ok(_) => panic!("dialing {bookie_id} succeeded"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bookie_with_auth_refuses_callers_without_a_valid_token_of_an_allowed_role() -> anyhow::Result<()> {
    let setup = Setup::new()?;
    let config = BookieConfig { auth: setup.auth(), ..BookieConfig::new("secured-0", setup.path("bookie")) };
    let bookie = setup.bookie(config).await?;

    let none = dial_error(&setup.client(None), "secured-0").await;
    assert!(none.contains("authentication failed") && none.contains("no token"), "{none}");
    let forged = dial_error(&setup.client(Some(setup.token("other.key", "broker", None)?)), "secured-0").await;
    assert!(forged.contains("authentication failed") && forged.contains("invalid token"), "{forged}");
    let garbage = dial_error(&setup.client(Some("not.a.jwt".to_owned())), "secured-0").await;
    assert!(garbage.contains("authentication failed"), "{garbage}");
    let app = dial_error(&setup.client(Some(setup.token("secret.key", "app", None)?)), "secured-0").await;
    assert!(app.contains("role app may not use this bookie"), "{app}");
    let expiring = setup.token("secret.key", "broker", Some(Duration::from_secs(1)))?;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = dial_error(&setup.client(Some(expiring)), "secured-0").await;
    assert!(expired.contains("ExpiredSignature"), "{expired}");
    // A writer without a token cannot create a ledger's first entry: nothing is stored.
    let refused = setup.client(None);
    let writer = LedgerWriter::create(&refused, ONE, None).await?;
    let add = writer.add(payload(0)).await;
    let outcome = match add {
        Ok(answer) => answer.await.map_err(|_| anyhow::anyhow!("dropped"))?.map(|_| ()),
        Err(error) => Err(error),
    };
    assert!(outcome.is_err(), "an add without a token was acknowledged");

    let broker = setup.client(Some(setup.token("secret.key", "broker", Some(Duration::from_secs(600)))?));
    write_and_read(&broker).await?;
    broker.close().await;
    refused.close().await;
    bookie.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_is_read_again_at_the_next_connection() -> anyhow::Result<()> {
    let setup = Setup::new()?;
    let config = BookieConfig { auth: setup.auth(), ..BookieConfig::new("rotating-0", setup.path("bookie")) };
    let bookie = setup.bookie(config).await?;
    let file = setup.path("broker.token");
    std::fs::write(&file, setup.token("other.key", "broker", None)?)?;
    let bookies =
        Bookies::secured(setup.meta.clone(), ClientSecurity::default().with_token(TokenParam::File(file.clone())));
    let refused = dial_error(&bookies, "rotating-0").await;
    assert!(refused.contains("invalid token"), "{refused}");
    std::fs::write(&file, format!("{}\n", setup.token("secret.key", "broker", None)?))?;
    write_and_read(&bookies).await?;
    bookies.close().await;
    bookie.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_bookie_is_reached_with_its_ca_and_a_token() -> anyhow::Result<()> {
    let setup = Setup::new()?;
    write_test_pki(setup.dir.path(), "broker")?;
    let config = BookieConfig {
        auth: setup.auth(),
        tls_certificate_path: Some(setup.path("server.pem")),
        tls_key_path: Some(setup.path("server.key")),
        ..BookieConfig::new("tls-0", setup.path("bookie"))
    };
    let bookie = setup.bookie(config).await?;
    let registered = registration::lookup(setup.meta.as_ref(), "tls-0").await?.context("registration")?;
    assert!(registered.tls, "a TLS bookie registers itself as TLS");

    let token = setup.token("secret.key", "broker", None)?;
    let no_ca = dial_error(&setup.client(Some(token.clone())), "tls-0").await;
    assert!(no_ca.contains("serves TLS") && no_ca.contains("bookkeeper_tls_trust_certs_file_path"), "{no_ca}");
    let trusting = |ca: &str| -> anyhow::Result<Bookies> {
        let security = ClientSecurity::default()
            .with_token(TokenParam::Inline(token.clone()))
            .with_trust_certs(setup.path(ca), std::fs::read(setup.path(ca))?);
        Ok(Bookies::secured(setup.meta.clone(), security))
    };
    let wrong_ca = dial_error(&trusting("other-ca.pem")?, "tls-0").await;
    assert!(
        wrong_ca.contains("cannot reach bookie tls-0") && wrong_ca.to_lowercase().contains("certificate"),
        "{wrong_ca}"
    );
    // Plain gRPC to the TLS port is not answered as a bookie would.
    let plain = BookieError::to_string(
        &magnetar_bookie::client::BookieConnection::connect(
            "tls-0",
            &registered.address,
            None,
            magnetar_bookie::security::AddToken(None),
        )
        .await
        .err()
        .context("plaintext to a TLS bookie succeeded")?,
    );
    assert!(!plain.is_empty());
    let secured = trusting("ca.pem")?;
    write_and_read(&secured).await?;
    secured.close().await;
    bookie.stop().await?;
    Ok(())
}

#[test]
fn bad_key_and_certificate_settings_stop_the_bookie_naming_the_setting() {
    let dir = TempDir::new().expect("dir");
    let open = |config: BookieConfig| match BookieServer::open(&config) {
        Ok(_) => panic!("bookie opened with {config:?}"),
        Err(error) => error.to_string(),
    };
    let base = BookieConfig::new("bad-0", dir.path().join("bookie"));
    let missing_key = BookieConfig {
        auth: BookieAuthConfig {
            enabled: true,
            token_secret_key: Some("file:///nonexistent/secret.key".to_owned()),
            ..BookieAuthConfig::default()
        },
        ..base.clone()
    };
    assert!(open(missing_key).contains("auth.token_secret_key"));
    let no_key =
        BookieConfig { auth: BookieAuthConfig { enabled: true, ..BookieAuthConfig::default() }, ..base.clone() };
    assert!(open(no_key).contains("token_secret_key and token_public_key"));
    let lone_certificate = BookieConfig { tls_certificate_path: Some("/nonexistent.pem".into()), ..base.clone() };
    assert!(open(lone_certificate).contains("together"));
    let missing_certificate = BookieConfig {
        tls_certificate_path: Some("/nonexistent/bookie.pem".into()),
        tls_key_path: Some("/nonexistent/bookie.key".into()),
        ..base
    };
    let error = open(missing_certificate);
    assert!(error.contains("tls_certificate_path /nonexistent/bookie.pem"), "{error}");
}

#[test]
fn a_bookie_config_file_sets_auth_tls_and_client_credentials() {
    let config: BookieConfig = toml::from_str(
        r#"
        tls_certificate_path = "/etc/magnetar/bookie.pem"
        tls_key_path = "/etc/magnetar/bookie.key"
        [auth]
        enabled = true
        token_public_key = "file:///etc/magnetar/public.key"
        allowed_roles = ["broker", "autorecovery"]
        [client]
        authentication_plugin = "org.apache.pulsar.client.impl.auth.AuthenticationToken"
        authentication_parameters = "token:inline-secret-token"
        tls_trust_certs_file_path = "/etc/magnetar/ca.pem"
        "#,
    )
    .expect("valid config");
    assert!(config.auth.enabled);
    assert_eq!(config.auth.allowed_roles, ["broker", "autorecovery"]);
    assert_eq!(config.client.tls_trust_certs_file_path.as_deref(), Some(Path::new("/etc/magnetar/ca.pem")));
    // Debug output (what a log line would show) never holds the token.
    let shown = format!("{config:?}");
    assert!(!shown.contains("inline-secret-token"), "{shown}");
    assert!(toml::from_str::<BookieConfig>("[auth]\nenable = true\n").is_err());
}
