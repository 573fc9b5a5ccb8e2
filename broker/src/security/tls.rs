//! TLS for the broker's listeners (`pulsar+ssl://` and HTTPS), with rustls and its ring
//! provider.
//!
//! The certificate, key and trusted CA come from PEM files (Pulsar's
//! `tlsCertificateFilePath`, `tlsKeyFilePath`, `tlsTrustCertsFilePath`). With a trusted CA,
//! clients are asked for a certificate; `tlsRequireTrustedClientCertOnConnect` makes one
//! mandatory, and `tlsAllowInsecureConnection` accepts a certificate that does not chain to
//! the CA (Pulsar's meaning: the client's key is still proven, its issuer is not checked).
//! Protocol versions (`tlsProtocols`) and cipher suites (`tlsCiphers`) can be narrowed.
//!
//! The files are watched (their modification times, every `tlsCertRefreshCheckDurationSec`):
//! when one changes the configuration is built again and new connections use it; if the new
//! files do not load, the old configuration stays and a log line says why.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS settings of a broker's listeners.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    pub certificate_file: PathBuf,
    pub key_file: PathBuf,
    /// CA certificates client certificates must chain to; none: clients are not asked for one.
    pub trust_certs_file: Option<PathBuf>,
    /// Accept client certificates that do not chain to the trusted CA.
    pub allow_insecure_connection: bool,
    /// Refuse clients without a certificate.
    pub require_trusted_client_cert: bool,
    /// `TLSv1.3`, `TLSv1.2`; empty: both.
    pub protocols: Vec<String>,
    /// Cipher suite names (IANA's, as Java writes them, or rustls's); empty: rustls's defaults.
    pub ciphers: Vec<String>,
    /// How often the files are checked for changes.
    pub refresh_check: Duration,
}

fn provider(settings: &TlsSettings) -> Result<CryptoProvider, String> {
    let mut provider = rustls::crypto::ring::default_provider();
    if !settings.ciphers.is_empty() {
        let normalize = |name: &str| name.trim().to_ascii_uppercase().replace("TLS13_", "TLS_");
        let wanted: Vec<String> = settings.ciphers.iter().map(|c| normalize(c)).collect();
        for name in &wanted {
            if !provider.cipher_suites.iter().any(|suite| normalize(&format!("{:?}", suite.suite())) == *name) {
                let known: Vec<String> =
                    provider.cipher_suites.iter().map(|suite| format!("{:?}", suite.suite())).collect();
                return Err(format!("tlsCiphers: {name} is not supported (supported: {})", known.join(", ")));
            }
        }
        provider.cipher_suites.retain(|suite| wanted.contains(&normalize(&format!("{:?}", suite.suite()))));
    }
    Ok(provider)
}

fn protocol_versions(settings: &TlsSettings) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, String> {
    if settings.protocols.is_empty() {
        return Ok(vec![&rustls::version::TLS13, &rustls::version::TLS12]);
    }
    settings
        .protocols
        .iter()
        .map(|name| match name.trim() {
            "TLSv1.3" => Ok(&rustls::version::TLS13),
            "TLSv1.2" => Ok(&rustls::version::TLS12),
            other => Err(format!("tlsProtocols: {other} is not supported (TLSv1.3, TLSv1.2)")),
        })
        .collect()
}

fn certificates(path: &PathBuf, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|error| format!("{what} {}: {error}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|error| format!("{what} {}: {error}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// The rustls configuration of `settings`; the error names the setting and the file.
pub fn server_config(settings: &TlsSettings) -> Result<ServerConfig, String> {
    let provider = Arc::new(provider(settings)?);
    let versions = protocol_versions(settings)?;
    let chain = certificates(&settings.certificate_file, "tlsCertificateFilePath")?;
    let key = PrivateKeyDer::from_pem_file(&settings.key_file)
        .map_err(|error| format!("tlsKeyFilePath {}: {error}", settings.key_file.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|error| format!("tlsProtocols/tlsCiphers: {error}"))?;
    let verifier: Arc<dyn ClientCertVerifier> = match &settings.trust_certs_file {
        None => WebPkiClientVerifier::no_client_auth(),
        Some(path) => {
            let ca_certificates = certificates(path, "tlsTrustCertsFilePath")?;
            let mut roots = RootCertStore::empty();
            for cert in ca_certificates.iter().cloned() {
                roots.add(cert).map_err(|error| format!("tlsTrustCertsFilePath {}: {error}", path.display()))?;
            }
            let roots = Arc::new(roots);
            if settings.allow_insecure_connection {
                Arc::new(AnyClientCert {
                    provider: provider.clone(),
                    mandatory: settings.require_trusted_client_cert,
                    hints: roots.subjects(),
                })
            } else {
                let builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
                let builder =
                    if settings.require_trusted_client_cert { builder } else { builder.allow_unauthenticated() };
                let webpki =
                    builder.build().map_err(|error| format!("tlsTrustCertsFilePath {}: {error}", path.display()))?;
                let algorithms = provider.signature_verification_algorithms;
                Arc::new(WithVersion1Certificates { webpki, ca_certificates, algorithms })
            }
        }
    };
    let mut config = builder
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|error| format!("tlsCertificateFilePath/tlsKeyFilePath: {error}"))?;
    // HTTPS speaks HTTP/1.1 (clients that offer no ALPN, as Pulsar clients, are served too).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `tlsAllowInsecureConnection`: any client certificate is taken (its signature over the
/// handshake is still checked, so the client holds its key).
#[derive(Debug)]
struct AnyClientCert {
    provider: Arc<CryptoProvider>,
    mandatory: bool,
    hints: Vec<DistinguishedName>,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The trusted CA's verification, and X.509 version 1 client certificates (no extensions, as
/// Pulsar's own test CA issues them and Java accepts them) signed directly by a trusted CA:
/// webpki takes only version 3, so a version 1 certificate is checked here instead: its
/// issuer is a trusted CA, it is within its validity period, and the CA's key signed it.
#[derive(Debug)]
struct WithVersion1Certificates {
    webpki: Arc<dyn ClientCertVerifier>,
    ca_certificates: Vec<CertificateDer<'static>>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl WithVersion1Certificates {
    fn verify_version1(&self, end_entity: &CertificateDer<'_>, now: UnixTime) -> bool {
        use x509_parser::prelude::{FromDer, X509Certificate, X509Version};
        let Ok((_, cert)) = X509Certificate::from_der(end_entity.as_ref()) else { return false };
        if cert.version() != X509Version::V1 {
            return false;
        }
        let Ok(now) = x509_parser::time::ASN1Time::from_timestamp(now.as_secs() as i64) else { return false };
        if !cert.validity().is_valid_at(now) {
            return false;
        }
        self.ca_certificates.iter().any(|ca| {
            let Ok((_, ca)) = X509Certificate::from_der(ca.as_ref()) else { return false };
            ca.subject().as_raw() == cert.issuer().as_raw()
                && ca.validity().is_valid_at(now)
                && cert.verify_signature(Some(ca.public_key())).is_ok()
        })
    }
}

impl WithVersion1Certificates {
    /// The handshake signature of a version 1 certificate's key (webpki parses only version
    /// 3 certificates, so the key is taken out here and checked with the same algorithms).
    fn verify_version1_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Option<Result<HandshakeSignatureValid, rustls::Error>> {
        use x509_parser::prelude::{FromDer, X509Certificate, X509Version};
        let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
        if parsed.version() != X509Version::V1 {
            return None;
        }
        let key = &parsed.public_key().subject_public_key.data;
        let candidates =
            self.algorithms.mapping.iter().find(|(scheme, _)| *scheme == dss.scheme).map(|(_, algs)| *algs);
        let verified = candidates
            .unwrap_or_default()
            .iter()
            .any(|alg| alg.verify_signature(key, message, dss.signature()).is_ok());
        Some(if verified {
            Ok(HandshakeSignatureValid::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature))
        })
    }
}

impl ClientCertVerifier for WithVersion1Certificates {
    fn offer_client_auth(&self) -> bool {
        self.webpki.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.webpki.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.webpki.verify_client_cert(end_entity, intermediates, now) {
            Ok(verified) => Ok(verified),
            Err(_) if self.verify_version1(end_entity, now) => Ok(ClientCertVerified::assertion()),
            Err(error) => Err(error),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match self.verify_version1_signature(message, cert, dss) {
            Some(result) => result,
            None => self.webpki.verify_tls12_signature(message, cert, dss),
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.3 takes no PKCS#1 v1.5 or SHA-1 signatures (RFC 8446, 4.4.3).
        use SignatureScheme::*;
        if matches!(
            dss.scheme,
            RSA_PKCS1_SHA1 | RSA_PKCS1_SHA256 | RSA_PKCS1_SHA384 | RSA_PKCS1_SHA512 | ECDSA_SHA1_Legacy
        ) {
            return Err(rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into());
        }
        match self.verify_version1_signature(message, cert, dss) {
            Some(result) => result,
            None => self.webpki.verify_tls13_signature(message, cert, dss),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// The common name of a certificate's subject (the TLS provider's role).
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let name = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(name)
}

/// The TLS server side of a listener, reloading its files when they change.
pub struct TlsAcceptor {
    settings: TlsSettings,
    current: RwLock<(tokio_rustls::TlsAcceptor, Vec<Option<SystemTime>>)>,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor").field("certificate_file", &self.settings.certificate_file).finish()
    }
}

/// A TLS stream accepted, and the common name of the client's certificate if it sent one.
pub struct Accepted<S> {
    pub stream: tokio_rustls::server::TlsStream<S>,
    pub client_common_name: Option<String>,
}

impl TlsAcceptor {
    /// Loads the files; an error names the setting and the file.
    pub fn new(settings: TlsSettings) -> Result<Arc<Self>, String> {
        let config = server_config(&settings)?;
        let stamps = Self::stamps(&settings);
        Ok(Arc::new(TlsAcceptor {
            settings,
            current: RwLock::new((tokio_rustls::TlsAcceptor::from(Arc::new(config)), stamps)),
        }))
    }

    fn stamps(settings: &TlsSettings) -> Vec<Option<SystemTime>> {
        [Some(&settings.certificate_file), Some(&settings.key_file), settings.trust_certs_file.as_ref()]
            .into_iter()
            .flatten()
            .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
            .collect()
    }

    /// Builds the configuration again if a file changed since it was loaded; true if it did.
    pub fn reload_if_changed(&self) -> bool {
        let stamps = Self::stamps(&self.settings);
        if self.current.read().1 == stamps {
            return false;
        }
        match server_config(&self.settings) {
            Ok(config) => {
                *self.current.write() = (tokio_rustls::TlsAcceptor::from(Arc::new(config)), stamps);
                info!(certificate = %self.settings.certificate_file.display(), "TLS certificate reloaded");
                true
            }
            Err(error) => {
                // Keep serving with the old files; try again at the next check (the stamps are
                // not updated, so a half-written file is read again once complete).
                warn!(%error, "TLS files changed but do not load; keeping the previous ones");
                false
            }
        }
    }

    /// Checks the files every `refresh_check` until `cancel` fires.
    pub fn spawn_reloader(self: &Arc<Self>, cancel: CancellationToken) {
        let acceptor = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(acceptor.settings.refresh_check);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => { acceptor.reload_if_changed(); }
                    () = cancel.cancelled() => return,
                }
            }
        });
    }

    /// The TLS handshake over `stream`, bounded by [`HANDSHAKE_TIMEOUT`].
    pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S) -> std::io::Result<Accepted<S>> {
        let acceptor = self.current.read().0.clone();
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let client_common_name =
            stream.get_ref().1.peer_certificates().and_then(|certs| certs.first()).and_then(common_name);
        Ok(Accepted { stream, client_common_name })
    }
}
