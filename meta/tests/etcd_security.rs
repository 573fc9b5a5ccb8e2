//! `EtcdStore` against a real etcd that demands a user and password, and one that serves TLS
//! only (and one that also requires a client certificate): the right settings work end to end
//! (writes, a session with an ephemeral key, a watch), wrong ones fail with an error that says
//! why, bounded in time, and never show the password.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use etcd_client::{Client, Permission};
use magnetar_meta::testing::{write_test_pki, EtcdServer, EtcdTls};
use magnetar_meta::{EtcdOptions, EtcdStore, Expected, MetadataStore, WatchEvent};

const PASSWORD: &str = "s3cret-etcd-pw";

/// Adds `root` and a `magnetar` user allowed every key, then turns authentication on.
async fn enable_auth(etcd: &EtcdServer) -> Result<()> {
    let client = Client::connect(etcd.endpoints(), None).await?;
    let mut auth = client.auth_client();
    auth.user_add("root", "root-pw", None).await?;
    let _ = auth.role_add("root").await;
    auth.user_grant_role("root", "root").await?;
    auth.role_add("magnetar-role").await?;
    auth.role_grant_permission("magnetar-role", Permission::read_write(vec![0u8]).with_from_key()).await?;
    auth.user_add("magnetar", PASSWORD, None).await?;
    auth.user_grant_role("magnetar", "magnetar-role").await?;
    auth.auth_enable().await?;
    Ok(())
}

/// Puts, reads, opens a session with an ephemeral key, and sees both through a watch.
async fn exercise(store: &EtcdStore) -> Result<()> {
    let mut watch = store.watch("/secured/").await?;
    store.put("/secured/plain", b"one".to_vec(), Expected::Absent).await?;
    ensure!(store.get("/secured/plain").await?.context("read back")?.value == b"one");
    let session = store.create_session(Duration::from_secs(5)).await?;
    store.put_ephemeral(session, "/secured/ephemeral", b"two".to_vec(), Expected::Absent).await?;
    for expected in ["/secured/plain", "/secured/ephemeral"] {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.recv()).await?.context("watch closed")?;
        ensure!(matches!(&event, WatchEvent::Put { key, .. } if key == expected), "unexpected {event:?}");
    }
    store.close_session(session).await?;
    ensure!(store.get("/secured/ephemeral").await?.is_none(), "the session's key is gone");
    Ok(())
}

async fn connect_error(endpoints: &[String], options: &EtcdOptions) -> String {
    let started = std::time::Instant::now();
    let result = EtcdStore::connect_with(endpoints, options).await;
    assert!(started.elapsed() < Duration::from_secs(30), "connect took {:?}", started.elapsed());
    match result {
        Ok(_) => panic!("connected with {options:?}"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_user_is_required_and_its_password_never_shows() -> Result<()> {
    let etcd = EtcdServer::start().await?;
    enable_auth(&etcd).await?;
    let endpoints = etcd.endpoints();
    let user = |password: &str| EtcdOptions {
        user: Some("magnetar".to_owned()),
        password: Some(password.to_owned()),
        ..EtcdOptions::default()
    };
    let wrong = connect_error(&endpoints, &user("not-the-password")).await;
    ensure!(wrong.contains("authentication failed"), "{wrong}");
    ensure!(!wrong.contains("not-the-password"), "the password shows: {wrong}");
    let anonymous = EtcdStore::connect(&endpoints).await;
    if let Ok(store) = anonymous {
        // etcd 3.4 lets an anonymous client connect, but refuses what it asks.
        let refused = store.put("/secured/x", b"x".to_vec(), Expected::Any).await;
        ensure!(refused.is_err(), "an anonymous client wrote to an etcd with authentication on");
    }

    let store = EtcdStore::connect_with(&endpoints, &user(PASSWORD)).await?;
    exercise(&store).await?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_is_reached_with_its_ca_only() -> Result<()> {
    let dir = tempfile::tempdir()?;
    write_test_pki(dir.path(), "magnetar")?;
    let etcd = tls_etcd(dir.path(), false).await?;
    // Endpoints as a metadata URL gives them (http://): TLS settings make them https.
    let endpoints = vec![etcd.endpoint().replace("https://", "http://")];
    let store = EtcdStore::connect_with(&endpoints, &tls_options(dir.path(), "ca.pem", false)).await?;
    exercise(&store).await?;
    let plain = connect_error(&endpoints, &EtcdOptions::default()).await;
    ensure!(plain.contains("etcd at"), "{plain}");
    let stranger = connect_error(&endpoints, &tls_options(dir.path(), "other-ca.pem", false)).await;
    ensure!(stranger.to_lowercase().contains("certificate") || stranger.contains("did not answer"), "{stranger}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_requiring_client_certificates_takes_ours() -> Result<()> {
    let dir = tempfile::tempdir()?;
    write_test_pki(dir.path(), "magnetar")?;
    let etcd = tls_etcd(dir.path(), true).await?;
    let endpoints = etcd.endpoints();
    let without = connect_error(&endpoints, &tls_options(dir.path(), "ca.pem", false)).await;
    ensure!(without.contains("etcd at"), "{without}");
    let store = EtcdStore::connect_with(&endpoints, &tls_options(dir.path(), "ca.pem", true)).await?;
    exercise(&store).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zz_explore_messages() -> Result<()> {
    use magnetar_meta::testing::EtcdLaunch;
    let etcd = EtcdServer::start_configured(EtcdLaunch {
        extra_args: vec!["--auth-token-ttl=1".into()],
        ..Default::default()
    })
    .await?;
    enable_auth(&etcd).await?;
    let endpoints = etcd.endpoints();
    let o = EtcdOptions { user: Some("magnetar".into()), password: Some(PASSWORD.into()), ..Default::default() };
    let store = EtcdStore::connect_with(&endpoints, &o).await?;
    let session = store.create_session(Duration::from_secs(2)).await?;
    store.put_ephemeral(session, "/e", b"x".to_vec(), Expected::Any).await?;
    let raw =
        Client::connect(&endpoints, Some(etcd_client::ConnectOptions::new().with_user("magnetar", PASSWORD))).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    println!("RAW get: {:?}", raw.kv_client().get("/e", None).await.map(|r| r.kvs().len()));
    let mut w = raw.watch_client();
    match w.watch("/e", None).await {
        Ok(mut stream) => println!("RAW watch: {:?}", stream.message().await),
        Err(e) => println!("RAW watch err {e:?}"),
    }
    println!("STORE get: {:?}", store.get("/e").await.map_err(|e| e.to_string()));
    println!("STORE watch: {:?}", store.watch("/e").await.map_err(|e| e.to_string()).map(|_| ()));
    println!(
        "STORE put_ephemeral: {:?}",
        store.put_ephemeral(session, "/e2", b"x".to_vec(), Expected::Any).await.map_err(|e| e.to_string())
    );
    Ok(())
}
