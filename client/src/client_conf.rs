//! Pulsar's `client.conf`: the Java properties file that Pulsar's CLIs read
//! (`webServiceUrl`, `brokerServiceUrl`, `authPlugin`, `authParams`, `tlsTrustCertsFilePath`,
//! `tlsAllowInsecureConnection`, `tlsEnableHostnameVerification`, ...), read into a
//! [`ClientConf`] that fills a [`ClientConfig`].
//!
//! A key with an empty value (`authPlugin=`, as Pulsar's template has them) counts as unset.
//! A key this client does not use is ignored with a warning naming the key (never the value:
//! it may be a password). A value that does not fit its key is an error naming the file, the
//! line and the key.
//!
//! Command-line flags win over the file: a CLI turns its flags into a `ClientConf` too and
//! lays it over the file's with [`ClientConf::overridden_by`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use java_properties::{LineContent, PropertiesIter};
use tracing::warn;

use crate::address::ServiceUrl;
use crate::auth::{AuthPlugin, Authentication};
use crate::client::ClientConfig;
use crate::error::ClientError;

/// Settings as Pulsar's client.conf and CLI flags give them. Every field is optional: an unset
/// one leaves the client's default.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientConf {
    /// `webServiceUrl`: the admin HTTP endpoint. Kept for tools; the client does not use it.
    pub web_service_url: Option<String>,
    /// `brokerServiceUrl`: the service URL to connect to (`pulsar://` or `pulsar+ssl://`).
    pub broker_service_url: Option<String>,
    /// `authPlugin`: a Pulsar class name or a short name (see [`AuthPlugin`]).
    pub auth_plugin: Option<String>,
    /// `authParams`, in one of Pulsar's forms. A secret: `Debug` does not show it.
    pub auth_params: Option<String>,
    /// `tlsTrustCertsFilePath`.
    pub tls_trust_certs_file_path: Option<PathBuf>,
    /// `tlsAllowInsecureConnection`.
    pub tls_allow_insecure_connection: Option<bool>,
    /// `tlsEnableHostnameVerification` (or `tlsHostnameVerificationEnable`).
    pub tls_hostname_verification: Option<bool>,
    /// `tlsCertificateFilePath`: a client certificate for mutual TLS.
    pub tls_certificate_file_path: Option<PathBuf>,
    /// `tlsKeyFilePath`: the client certificate's key.
    pub tls_key_file_path: Option<PathBuf>,
}

impl ClientConf {
    /// Reads a client.conf file. This blocks on the file read: in async code use
    /// [`ClientConf::read_async`].
    pub fn read(path: impl AsRef<Path>) -> Result<ClientConf, ClientError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| ClientError::ReadFile {
            what: "the client configuration file",
            path: path.to_owned(),
            source,
        })?;
        ClientConf::parse(&bytes, path)
    }

    /// Reads a client.conf file without blocking the async threads.
    pub async fn read_async(path: impl AsRef<Path>) -> Result<ClientConf, ClientError> {
        let path = path.as_ref();
        let bytes = tokio::fs::read(path).await.map_err(|source| ClientError::ReadFile {
            what: "the client configuration file",
            path: path.to_owned(),
            source,
        })?;
        ClientConf::parse(&bytes, path)
    }

    /// Parses client.conf content; `path` only names the file in errors. The content is
    /// UTF-8 when it is valid UTF-8, else ISO-8859-1 as Java reads properties files; `\uXXXX`
    /// escapes work in both.
    pub fn parse(content: &[u8], path: &Path) -> Result<ClientConf, ClientError> {
        // Decoded here, and handed over as UTF-8 without a byte order mark: the crate's own
        // decoding sniffs byte order marks and can then panic (e.g. on FF FE).
        let text = match std::str::from_utf8(content) {
            Ok(text) => std::borrow::Cow::Borrowed(text.strip_prefix('\u{feff}').unwrap_or(text)),
            Err(_) => std::borrow::Cow::Owned(content.iter().map(|&byte| char::from(byte)).collect::<String>()),
        };
        let mut conf = ClientConf::default();
        let mut auth_params_line = 0;
        for line in PropertiesIter::new_with_encoding(text.as_bytes(), encoding_rs::UTF_8) {
            let line = line.map_err(|source| ClientError::ClientConfSyntax { path: path.to_owned(), source })?;
            let number = line.line_number();
            let LineContent::KVPair(key, value) = line.consume_content() else { continue };
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            let invalid = |reason: String| ClientError::InvalidClientConf {
                path: path.to_owned(),
                line: number,
                key: key.clone(),
                reason,
            };
            match key.as_str() {
                "webServiceUrl" => {
                    if !(value.starts_with("http://") || value.starts_with("https://")) {
                        return Err(invalid("expected an http:// or https:// URL".into()));
                    }
                    conf.web_service_url = Some(value.to_owned());
                }
                "brokerServiceUrl" => {
                    ServiceUrl::parse(value).map_err(|error| invalid(error.to_string()))?;
                    conf.broker_service_url = Some(value.to_owned());
                }
                "authPlugin" => {
                    AuthPlugin::from_name(value).map_err(|error| invalid(error.to_string()))?;
                    conf.auth_plugin = Some(value.to_owned());
                }
                "authParams" => {
                    conf.auth_params = Some(value.to_owned());
                    auth_params_line = number;
                }
                "tlsTrustCertsFilePath" => conf.tls_trust_certs_file_path = Some(PathBuf::from(value)),
                "tlsCertificateFilePath" => conf.tls_certificate_file_path = Some(PathBuf::from(value)),
                "tlsKeyFilePath" => conf.tls_key_file_path = Some(PathBuf::from(value)),
                "tlsAllowInsecureConnection" => {
                    conf.tls_allow_insecure_connection = Some(parse_bool(value).map_err(invalid)?);
                }
                "tlsEnableHostnameVerification" | "tlsHostnameVerificationEnable" => {
                    conf.tls_hostname_verification = Some(parse_bool(value).map_err(invalid)?);
                }
                _ => {
                    warn!(file = %path.display(), line = number, %key, "client.conf setting not used by this client; ignored")
                }
            }
        }
        // Parameters that the plugin cannot use are reported here, at their line.
        if let (Some(plugin), Some(params)) = (&conf.auth_plugin, &conf.auth_params) {
            if let Err(error) = AuthPlugin::from_name(plugin).and_then(|plugin| plugin.authentication(params)) {
                return Err(ClientError::InvalidClientConf {
                    path: path.to_owned(),
                    line: auth_params_line,
                    key: "authParams".into(),
                    reason: error.to_string(),
                });
            }
        }
        Ok(conf)
    }

    /// These settings with every field that `flags` sets replaced by the flag's value.
    pub fn overridden_by(self, flags: ClientConf) -> ClientConf {
        ClientConf {
            web_service_url: flags.web_service_url.or(self.web_service_url),
            broker_service_url: flags.broker_service_url.or(self.broker_service_url),
            // A plugin given alone (as a flag) does not take the file's parameters of another
            // plugin; parameters given alone apply to the file's plugin.
            auth_params: match (&flags.auth_plugin, flags.auth_params) {
                (_, Some(params)) => Some(params),
                (Some(_), None) => None,
                (None, None) => self.auth_params,
            },
            auth_plugin: flags.auth_plugin.or(self.auth_plugin),
            tls_trust_certs_file_path: flags.tls_trust_certs_file_path.or(self.tls_trust_certs_file_path),
            tls_allow_insecure_connection: flags.tls_allow_insecure_connection.or(self.tls_allow_insecure_connection),
            tls_hostname_verification: flags.tls_hostname_verification.or(self.tls_hostname_verification),
            tls_certificate_file_path: flags.tls_certificate_file_path.or(self.tls_certificate_file_path),
            tls_key_file_path: flags.tls_key_file_path.or(self.tls_key_file_path),
        }
    }

    /// The authentication that `auth_plugin` and `auth_params` describe; `None` without a
    /// plugin. Parameters without a plugin are an error.
    pub fn authentication(&self) -> Result<Option<Arc<dyn Authentication>>, ClientError> {
        match (&self.auth_plugin, &self.auth_params) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(ClientError::InvalidConfig {
                setting: "authParams",
                reason: "given without authPlugin (--auth-plugin)",
            }),
            (Some(plugin), params) => {
                Ok(Some(AuthPlugin::from_name(plugin)?.authentication(params.as_deref().unwrap_or_default())?))
            }
        }
    }

    /// Writes the set fields (authentication and TLS) into `config`; unset ones keep its
    /// values.
    pub fn apply_to(&self, config: &mut ClientConfig) -> Result<(), ClientError> {
        if let Some(authentication) = self.authentication()? {
            config.authentication = Some(authentication);
        }
        if let Some(path) = &self.tls_trust_certs_file_path {
            config.tls_trust_certs_file_path = Some(path.clone());
        }
        if let Some(allow) = self.tls_allow_insecure_connection {
            config.tls_allow_insecure_connection = allow;
        }
        if let Some(verify) = self.tls_hostname_verification {
            config.tls_hostname_verification = verify;
        }
        if let Some(path) = &self.tls_certificate_file_path {
            config.tls_certificate_file_path = Some(path.clone());
        }
        if let Some(path) = &self.tls_key_file_path {
            config.tls_key_file_path = Some(path.clone());
        }
        Ok(())
    }

    /// A [`ClientConfig`] with these settings over the defaults.
    pub fn client_config(&self) -> Result<ClientConfig, ClientError> {
        let mut config = ClientConfig::default();
        self.apply_to(&mut config)?;
        Ok(config)
    }
}

/// A boolean as Pulsar's files write it; unlike Java's lenient parse, anything but true or
/// false is refused, so a typo does not silently mean false.
fn parse_bool(value: &str) -> Result<bool, String> {
    if value.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(format!("expected true or false, got {value:?}"))
    }
}

impl fmt::Debug for ClientConf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConf")
            .field("web_service_url", &self.web_service_url)
            .field("broker_service_url", &self.broker_service_url)
            .field("auth_plugin", &self.auth_plugin)
            .field("auth_params", &self.auth_params.as_ref().map(|_| format_args!("<redacted>")))
            .field("tls_trust_certs_file_path", &self.tls_trust_certs_file_path)
            .field("tls_allow_insecure_connection", &self.tls_allow_insecure_connection)
            .field("tls_hostname_verification", &self.tls_hostname_verification)
            .field("tls_certificate_file_path", &self.tls_certificate_file_path)
            .field("tls_key_file_path", &self.tls_key_file_path)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/pulsar/client.conf";

    fn parse(text: &str) -> Result<ClientConf, ClientError> {
        ClientConf::parse(text.as_bytes(), Path::new(FILE))
    }

    fn refused(text: &str) -> (usize, String, String) {
        match parse(text) {
            Ok(conf) => panic!("{text:?} should be refused, got {conf:?}"),
            Err(ClientError::InvalidClientConf { line, key, reason, .. }) => (line, key, reason),
            Err(other) => panic!("{text:?}: unexpected error {other}"),
        }
    }

    #[test]
    fn pulsars_client_conf_is_read() {
        let text = "\
# Pulsar's client.conf
webServiceUrl=https://localhost:8443/
brokerServiceUrl=pulsar+ssl://localhost:6651/
authPlugin=org.apache.pulsar.client.impl.auth.AuthenticationToken
authParams=file:///etc/pulsar/token
tlsAllowInsecureConnection=false
tlsEnableHostnameVerification = false
tlsTrustCertsFilePath=/etc/pulsar/ca.cert.pem
useKeyStoreTls=false
tlsTrustStoreType=JKS
tlsTrustStorePath=
tlsTrustStorePassword=
";
        let conf = parse(text).expect("valid");
        assert_eq!(conf.web_service_url.as_deref(), Some("https://localhost:8443/"));
        assert_eq!(conf.broker_service_url.as_deref(), Some("pulsar+ssl://localhost:6651/"));
        assert_eq!(conf.auth_plugin.as_deref(), Some("org.apache.pulsar.client.impl.auth.AuthenticationToken"));
        assert_eq!(conf.auth_params.as_deref(), Some("file:///etc/pulsar/token"));
        assert_eq!(conf.tls_allow_insecure_connection, Some(false));
        assert_eq!(conf.tls_hostname_verification, Some(false));
        assert_eq!(conf.tls_trust_certs_file_path.as_deref(), Some(Path::new("/etc/pulsar/ca.cert.pem")));

        let config = conf.client_config().expect("config");
        assert_eq!(config.authentication.as_ref().map(|auth| auth.method_name()), Some("token"));
        assert!(!config.tls_hostname_verification);
        assert_eq!(config.tls_trust_certs_file_path.as_deref(), Some(Path::new("/etc/pulsar/ca.cert.pem")));
    }

    #[test]
    fn empty_values_are_unset_and_java_escapes_and_continuations_apply() {
        let text = "authPlugin=\nauthParams=\ntlsTrustCertsFilePath=/certs/\\u00e9\\\n  /ca.pem\n";
        let conf = parse(text).expect("valid");
        assert_eq!(conf.auth_plugin, None);
        assert_eq!(conf.tls_trust_certs_file_path.as_deref(), Some(Path::new("/certs/\u{e9}/ca.pem")));
        assert!(conf.client_config().expect("config").authentication.is_none());
    }

    #[test]
    fn malformed_values_name_the_key_and_line() {
        let (line, key, reason) = refused("# comment\ntlsAllowInsecureConnection=yes\n");
        assert_eq!((line, key.as_str()), (2, "tlsAllowInsecureConnection"));
        assert!(reason.contains("true or false"), "{reason}");

        let (line, key, _) = refused("\n\nbrokerServiceUrl=http://localhost:8080\n");
        assert_eq!((line, key.as_str()), (3, "brokerServiceUrl"));
        let (_, key, _) = refused("webServiceUrl=localhost:8080\n");
        assert_eq!(key, "webServiceUrl");
        let (line, key, reason) = refused("authPlugin=org.example.MyAuth\n");
        assert_eq!((line, key.as_str()), (1, "authPlugin"));
        assert!(reason.contains("unknown authentication plugin"), "{reason}");

        let (line, key, reason) = refused("authParams={\"userId\":\"u\"}\nauthPlugin=basic\n");
        assert_eq!((line, key.as_str()), (1, "authParams"));
        assert!(reason.contains("password is missing"), "{reason}");

        let error = parse("a=\\u12").expect_err("bad escape");
        assert!(matches!(error, ClientError::ClientConfSyntax { .. }), "{error}");
        assert!(error.to_string().contains(FILE), "{error}");
    }

    #[test]
    fn errors_never_quote_auth_params() {
        let error = parse("authPlugin=basic\nauthParams=userId:alice,hunter2\n").expect_err("malformed");
        assert!(!error.to_string().contains("hunter2"), "{error}");
        let conf = parse("authPlugin=token\nauthParams=token:secret-jwt\n").expect("valid");
        assert!(!format!("{conf:?}").contains("secret-jwt"), "{conf:?}");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        for text in ["=", "==", ":", "\\", "a\\", "\u{0}=\u{0}", "k=\\uzzzz", "\r\r\n=\n", "tlsAllowInsecureConnection"]
        {
            let _ = parse(text);
        }
        // Byte order marks once made the properties reader panic.
        for bom in [&[0xff, 0xfe][..], &[0xfe, 0xff], &[0xef, 0xbb, 0xbf]] {
            let mut content = bom.to_vec();
            content.extend_from_slice(b"tlsAllowInsecureConnection=true\n\x80=\xe9\n");
            let _ = ClientConf::parse(&content, Path::new(FILE));
        }
        let conf = ClientConf::parse(b"\xef\xbb\xbftlsAllowInsecureConnection=true\n", Path::new(FILE)).expect("valid");
        assert_eq!(conf.tls_allow_insecure_connection, Some(true));

        // Random bytes from a fixed seed, weighted towards the characters that matter.
        use rand::{Rng, SeedableRng};
        let mut random = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet = b"=:\\ \t\r\n#!uabtlsAuthPlugin{}\"\xff\xfe\xef\xbb\xbf\x80\xc3\x00";
        for _ in 0..2000 {
            let length = random.random_range(0..64);
            let content: Vec<u8> = (0..length)
                .map(|_| match random.random_range(0..4) {
                    0 => random.random(),
                    _ => alphabet[random.random_range(0..alphabet.len())],
                })
                .collect();
            let _ = ClientConf::parse(&content, Path::new(FILE));
        }
    }

    #[test]
    fn latin1_and_utf8_content_both_read() {
        let conf = ClientConf::parse(b"tlsTrustCertsFilePath=/caf\xe9/ca.pem\n", Path::new(FILE)).expect("latin-1");
        assert_eq!(conf.tls_trust_certs_file_path.as_deref(), Some(Path::new("/caf\u{e9}/ca.pem")));
        let conf =
            ClientConf::parse("tlsTrustCertsFilePath=/caf\u{e9}/ca.pem\n".as_bytes(), Path::new(FILE)).expect("utf-8");
        assert_eq!(conf.tls_trust_certs_file_path.as_deref(), Some(Path::new("/caf\u{e9}/ca.pem")));
    }

    #[test]
    fn flags_override_the_file_field_by_field() {
        let file = parse("brokerServiceUrl=pulsar://file:6650\nauthPlugin=basic\nauthParams=userId:u,password:p\ntlsAllowInsecureConnection=true\n")
            .expect("valid");
        let flags = ClientConf { broker_service_url: Some("pulsar://flag:6650".into()), ..Default::default() };
        let merged = file.clone().overridden_by(flags);
        assert_eq!(merged.broker_service_url.as_deref(), Some("pulsar://flag:6650"));
        assert_eq!(merged.auth_plugin.as_deref(), Some("basic"));
        assert_eq!(merged.tls_allow_insecure_connection, Some(true));

        // A plugin flag alone does not inherit the file's parameters of another plugin.
        let flags = ClientConf { auth_plugin: Some("token".into()), ..Default::default() };
        let merged = file.clone().overridden_by(flags);
        assert!(merged.authentication().is_err(), "token without parameters");
        let flags = ClientConf {
            auth_plugin: Some("token".into()),
            auth_params: Some("token:abc".into()),
            tls_allow_insecure_connection: Some(false),
            ..Default::default()
        };
        let merged = file.overridden_by(flags);
        assert_eq!(
            merged.authentication().expect("valid").map(|auth| auth.method_name().to_owned()).as_deref(),
            Some("token")
        );
        assert_eq!(merged.tls_allow_insecure_connection, Some(false));
    }

    #[test]
    fn params_without_a_plugin_are_refused() {
        let conf = ClientConf { auth_params: Some("token:abc".into()), ..Default::default() };
        assert!(matches!(conf.authentication(), Err(ClientError::InvalidConfig { setting: "authParams", .. })));
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let error = ClientConf::read("/nonexistent/client.conf").expect_err("missing");
        assert!(matches!(error, ClientError::ReadFile { .. }), "{error}");
    }
}
