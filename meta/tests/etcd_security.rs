//! `EtcdStore` against a real etcd that demands a user and password, and one that serves TLS
//! only (and one that also requires a client certificate): the right settings work end to end
//! (writes, a session with an ephemeral key, a watch), wrong ones fail with an error that says
//! why, bounded in time, and never show the password. Also: a store outlives its etcd token
//! (etcd forgets tokens left unused for `--auth-token-ttl`), and settings that do not go
//! together fail before anything is dialed.
//!
//! The tests live in a module named after the file so that
//! `cargo test --workspace --all-targets -- etcd_security` picks them out of the workspace.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use etcd_client::{Certificate, Client, ConnectOptions, Permission, TlsOptions};
use magnetar_meta::testing::{write_test_pki, EtcdLaunch, EtcdServer, EtcdTls};
use magnetar_meta::{EtcdOptions, EtcdStore, Expected, MetaError, MetadataStore, WatchEvent};

const PASSWORD: &str = "s3cret-etcd-pw";
/// Any failing connect must end well within this (the store's own timeouts are 5 s to
/// connect and 10 s per call).
const CONNECT_BOUND: Duration = Duration::from_secs(30);

/// Adds `root` and a `magnetar` user allowed every key, then turns authentication on.
/// `connect` reaches the etcd as an administrator would (its TLS, no user yet).
async fn enable_auth(etcd: &EtcdServer, connect: Option<ConnectOptions>) -> Result<()> {
    let client = Client::connect(etcd.endpoints(), connect).await?;
    let mut auth = client.auth_client();
    auth.user_add("root", "root-pw", None).await?;
    // etcd 3.4 has no root role until one is added; a later etcd may have it already.
    let _ = auth.role_add("root").await;
    auth.user_grant_role("root", "root").await?;
    auth.role_add("magnetar-role").await?;
    auth.role_grant_permission("magnetar-role", Permission::read_write(vec![0u8]).with_from_key()).await?;
    auth.user_add("magnetar", PASSWORD, None).await?;
    auth.user_grant_role("magnetar", "magnetar-role").await?;
    auth.auth_enable().await?;
    Ok(())
}

fn user(password: &str) -> EtcdOptions {
    EtcdOptions { user: Some("magnetar".to_owned()), password: Some(password.to_owned()), ..EtcdOptions::default() }
}

/// Under a prefix of its own: puts, reads, opens a session with an ephemeral key, sees both
/// through a watch, and sees the ephemeral key go with the session.
async fn exercise(store: &EtcdStore, prefix: &str) -> Result<()> {
    let (plain, ephemeral) = (format!("{prefix}/plain"), format!("{prefix}/ephemeral"));
    let mut watch = store.watch(&format!("{prefix}/")).await?;
    store.put(&plain, b"one".to_vec(), Expected::Absent).await?;
    ensure!(store.get(&plain).await?.context("read back")?.value == b"one");
    let session = store.create_session(Duration::from_secs(5)).await?;
    store.put_ephemeral(session, &ephemeral, b"two".to_vec(), Expected::Absent).await?;
    for expected in [&plain, &ephemeral] {
        let event = next_event(&mut watch).await?;
        ensure!(matches!(&event, WatchEvent::Put { key, .. } if key == expected), "unexpected {event:?}");
    }
    store.close_session(session).await?;
    ensure!(store.get(&ephemeral).await?.is_none(), "the session's key is gone");
    Ok(())
}

async fn next_event(watch: &mut magnetar_meta::Watch) -> Result<WatchEvent> {
    tokio::time::timeout(Duration::from_secs(10), watch.recv()).await?.context("watch closed")
}

/// The error of a connect that must fail, checked to end in bounded time.
async fn connect_error(endpoints: &[String], options: &EtcdOptions) -> MetaError {
    let started = Instant::now();
    let result = EtcdStore::connect_with(endpoints, options).await;
    assert!(started.elapsed() < CONNECT_BOUND, "connect took {:?}", started.elapsed());
    match result {
        Ok(_) => panic!("connected with {options:?}"),
        Err(error) => error,
    }
}

fn tls_options(dir: &Path, ca: &str, client_certificate: bool) -> EtcdOptions {
    EtcdOptions {
        tls_trust_certs_file_path: Some(dir.join(ca)),
        tls_certificate_file_path: client_certificate.then(|| dir.join("client.pem")),
        tls_key_file_path: client_certificate.then(|| dir.join("client.key")),
        ..EtcdOptions::default()
    }
}

async fn tls_etcd(dir: &Path, client_cert_auth: bool) -> Result<EtcdServer> {
    Ok(EtcdServer::start_with(Some(EtcdTls {
        certificate_file: dir.join("server.pem"),
        key_file: dir.join("server.key"),
        trusted_ca_file: dir.join("ca.pem"),
        client_cert_auth,
        probe: tls_options(dir, "ca.pem", client_cert_auth),
    }))
    .await?)
}

mod etcd_security {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_etcd_user_is_required_and_its_password_never_shows() -> Result<()> {
        let etcd = EtcdServer::start().await?;
        enable_auth(&etcd, None).await?;
        let endpoints = etcd.endpoints();

        // etcd 3.4 lets a client without a user open a connection, then refuses its first
        // read ("user name is empty"): connect reads once, so it fails.
        let anonymous = connect_error(&endpoints, &EtcdOptions::default()).await;
        ensure!(matches!(anonymous, MetaError::EtcdAuthentication { .. }), "{anonymous:?}");
        let text = anonymous.to_string();
        ensure!(text.contains("authentication failed") && text.contains("no etcd user"), "{text}");

        for wrong in [user("not-the-password"), EtcdOptions { user: Some("nobody".into()), ..user(PASSWORD) }] {
            let error = connect_error(&endpoints, &wrong).await;
            let (text, debug) = (error.to_string(), format!("{error:?}"));
            ensure!(matches!(error, MetaError::EtcdAuthentication { .. }), "{debug}");
            ensure!(text.contains("authentication failed") && text.contains("wrong password"), "{text}");
            ensure!(!text.contains("not-the-password") && !debug.contains("not-the-password"), "{debug}");
            ensure!(!text.contains(PASSWORD) && !debug.contains(PASSWORD), "{debug}");
        }

        let store = EtcdStore::connect_with(&endpoints, &user(PASSWORD)).await?;
        exercise(&store, "/secured").await?;

        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("password"), format!("{PASSWORD}\n"))?;
        let from_file = EtcdOptions {
            user: Some("magnetar".to_owned()),
            password_file: Some(dir.path().join("password")),
            ..EtcdOptions::default()
        };
        let store = EtcdStore::connect_with(&endpoints, &from_file).await?;
        ensure!(store.get("/secured/plain").await?.is_some(), "the password file's user reads");
        Ok(())
    }

    /// etcd forgets a simple token left unused for `--auth-token-ttl` (here 1 s; lease
    /// keep-alives do not count as use). The store authenticates again: for calls through
    /// etcd-client's token refresh, for a new watch (which etcd cancels at once on a stale
    /// token, a case etcd-client does not see) by itself. A session opened before lives on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_outlives_its_etcd_token() -> Result<()> {
        let launch = EtcdLaunch { extra_args: vec!["--auth-token-ttl=1".to_owned()], ..EtcdLaunch::default() };
        let etcd = EtcdServer::start_configured(launch).await?;
        enable_auth(&etcd, None).await?;
        let store = EtcdStore::connect_with(&etcd.endpoints(), &user(PASSWORD)).await?;
        let session = store.create_session(Duration::from_secs(2)).await?;
        store.put_ephemeral(session, "/stale/before", b"0".to_vec(), Expected::Absent).await?;

        tokio::time::sleep(Duration::from_secs(4)).await;
        let mut watch = store.watch("/stale/").await.context("watch with a stale token")?;
        tokio::time::sleep(Duration::from_secs(4)).await;
        store.put_ephemeral(session, "/stale/after", b"1".to_vec(), Expected::Absent).await?;
        let event = next_event(&mut watch).await?;
        ensure!(matches!(&event, WatchEvent::Put { key, .. } if key == "/stale/after"), "unexpected {event:?}");
        tokio::time::sleep(Duration::from_secs(4)).await;
        ensure!(store.get("/stale/before").await?.is_some(), "the session kept its key");
        exercise(&store, "/stale/again").await?;
        Ok(())
    }

    /// A user given to an etcd without authentication fails clearly rather than being
    /// ignored: the operator thinks the store is protected.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_user_for_an_etcd_without_authentication_is_refused() -> Result<()> {
        let etcd = EtcdServer::start().await?;
        let error = connect_error(&etcd.endpoints(), &user(PASSWORD)).await;
        let text = error.to_string();
        ensure!(text.contains("authentication failed") && text.contains("authentication off"), "{text}");
        ensure!(!text.contains(PASSWORD), "{text}");
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_over_tls_is_reached_with_its_ca_only() -> Result<()> {
        let dir = tempfile::tempdir()?;
        write_test_pki(dir.path(), "magnetar")?;
        let etcd = tls_etcd(dir.path(), false).await?;
        // Endpoints as a metadata URL gives them (http://): TLS settings make them https.
        let endpoints = vec![etcd.endpoint().replace("https://", "http://")];
        let store = EtcdStore::connect_with(&endpoints, &tls_options(dir.path(), "ca.pem", false)).await?;
        exercise(&store, "/tls").await?;

        let plain = connect_error(&endpoints, &EtcdOptions::default()).await;
        ensure!(matches!(plain, MetaError::Etcd { .. } | MetaError::EtcdTimeout { .. }), "{plain:?}");
        let stranger = connect_error(&endpoints, &tls_options(dir.path(), "other-ca.pem", false)).await.to_string();
        ensure!(stranger.contains("UnknownIssuer"), "{stranger}");
        // https:// without a CA would be dialed without one: refused before dialing.
        let unchecked = connect_error(&etcd.endpoints(), &EtcdOptions::default()).await;
        ensure!(matches!(unchecked, MetaError::InvalidConfig { .. }), "{unchecked:?}");
        Ok(())
    }

    /// TLS and a user together: the user's password travels encrypted, and the store works.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_etcd_user_over_tls() -> Result<()> {
        let dir = tempfile::tempdir()?;
        write_test_pki(dir.path(), "magnetar")?;
        let etcd = tls_etcd(dir.path(), false).await?;
        let ca = Certificate::from_pem(std::fs::read(dir.path().join("ca.pem"))?);
        enable_auth(&etcd, Some(ConnectOptions::new().with_tls(TlsOptions::new().ca_certificate(ca)))).await?;
        let tls = tls_options(dir.path(), "ca.pem", false);
        let error = connect_error(&etcd.endpoints(), &tls).await.to_string();
        ensure!(error.contains("authentication failed"), "{error}");
        let options = EtcdOptions { user: Some("magnetar".to_owned()), password: Some(PASSWORD.to_owned()), ..tls };
        let store = EtcdStore::connect_with(&etcd.endpoints(), &options).await?;
        exercise(&store, "/tls-user").await?;
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_requiring_client_certificates_takes_ours() -> Result<()> {
        let dir = tempfile::tempdir()?;
        write_test_pki(dir.path(), "magnetar")?;
        let etcd = tls_etcd(dir.path(), true).await?;
        let endpoints = etcd.endpoints();
        let without = connect_error(&endpoints, &tls_options(dir.path(), "ca.pem", false)).await;
        ensure!(matches!(without, MetaError::Etcd { .. } | MetaError::EtcdTimeout { .. }), "{without:?}");
        let store = EtcdStore::connect_with(&endpoints, &tls_options(dir.path(), "ca.pem", true)).await?;
        exercise(&store, "/mtls").await?;
        Ok(())
    }

    /// Settings that cannot work fail before anything is dialed (the endpoint is a closed
    /// port), naming the setting and file, never the password.
    #[tokio::test]
    async fn settings_that_cannot_work_are_named() -> Result<()> {
        let nowhere = vec!["http://127.0.0.1:1".to_owned()];
        let both = EtcdOptions { password_file: Some("/etc/etcd-password".into()), ..user("hunter22") };
        let error = connect_error(&nowhere, &both).await;
        ensure!(matches!(error, MetaError::InvalidConfig { .. }), "{error:?}");
        ensure!(error.to_string().contains("not both") && !format!("{error:?}").contains("hunter22"), "{error:?}");

        let missing_ca = EtcdOptions { tls_trust_certs_file_path: Some("/x/ca.pem".into()), ..EtcdOptions::default() };
        let error = connect_error(&nowhere, &missing_ca).await.to_string();
        ensure!(error.contains("tls_trust_certs_file_path") && error.contains("/x/ca.pem"), "{error}");
        ensure!(error.contains("No such file"), "{error}");

        let missing_password =
            EtcdOptions { password_file: Some("/x/password".into()), ..EtcdOptions { password: None, ..user("") } };
        let error = connect_error(&nowhere, &missing_password).await.to_string();
        ensure!(error.contains("password_file") && error.contains("/x/password"), "{error}");

        let lone_certificate = EtcdOptions {
            tls_certificate_file_path: Some("/x/client.pem".into()),
            ..tls_options(Path::new("/x"), "ca.pem", false)
        };
        let error = connect_error(&nowhere, &lone_certificate).await.to_string();
        ensure!(error.contains("tls_key_file_path"), "{error}");
        Ok(())
    }

    #[test]
    fn debug_never_shows_the_password() {
        let options = EtcdOptions { password_file: Some("/etc/pw".into()), ..user("hunter22") };
        let shown = format!("{options:?}");
        assert!(shown.contains("magnetar") && shown.contains("/etc/pw"), "{shown}");
        assert!(!shown.contains("hunter22") && shown.contains("***"), "{shown}");
    }
}
