//! The security flags every Magnetar CLI shares, spelled as Pulsar's CLIs spell them, and how
//! they combine with a client.conf: a flag wins over the file, the file over the defaults.

use std::fmt;
use std::path::PathBuf;

use crate::client::ClientConfig;
use crate::client_conf::ClientConf;
use crate::error::ClientError;

/// `--client-conf`, `--auth-plugin`, `--auth-params` and the TLS flags, for a CLI to
/// `#[command(flatten)]`.
#[derive(Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ConnectionArgs {
    /// Pulsar's client.conf to read settings from (brokerServiceUrl, authPlugin, authParams,
    /// tlsTrustCertsFilePath, ...); flags win over it.
    #[arg(global = true, long = "client-conf", value_name = "FILE")]
    pub client_conf: Option<PathBuf>,

    /// Authentication plugin: token, basic, tls, or Pulsar's class name
    /// (org.apache.pulsar.client.impl.auth.AuthenticationToken, ...).
    #[arg(global = true, long = "auth-plugin", value_name = "PLUGIN")]
    pub auth_plugin: Option<String>,

    /// Authentication parameters, as Pulsar takes them: token:<jwt>, file:///path/to/token,
    /// a JSON object such as {"userId":"u","password":"p"}, or key:value pairs such as
    /// tlsCertFile:/a.pem,tlsKeyFile:/b.pem.
    #[arg(global = true, long = "auth-params", value_name = "PARAMS")]
    pub auth_params: Option<String>,

    /// PEM file of the CA certificates that sign the brokers' certificates (default: the
    /// system's trusted roots).
    #[arg(global = true, long = "tls-trust-cert-path", visible_alias = "trust-cert-file", value_name = "FILE")]
    pub tls_trust_cert_path: Option<PathBuf>,

    /// Accept any broker certificate (encrypted but open to interception: for tests only).
    #[arg(global = true, long = "tls-allow-insecure")]
    pub tls_allow_insecure: bool,

    /// Check that a broker's certificate is issued for its host name (default true).
    #[arg(global = true, long = "tls-enable-hostname-verification", value_name = "BOOL")]
    pub tls_hostname_verification: Option<bool>,
}

impl ConnectionArgs {
    /// The service URL and settings to connect with: `service_url` (the CLI's URL flag, if
    /// given) over client.conf's `brokerServiceUrl` over `default_url`, and the flags over the
    /// file for everything else.
    pub async fn resolve(
        &self,
        service_url: Option<&str>,
        default_url: &str,
    ) -> Result<(String, ClientConfig), ClientError> {
        let conf = self
            .merged(ClientConf { broker_service_url: service_url.map(str::to_owned), ..ClientConf::default() })
            .await?;
        let config = conf.client_config()?;
        let url = conf.broker_service_url.unwrap_or_else(|| default_url.to_owned());
        Ok((url, config))
    }
}

impl ConnectionArgs {
    /// The settings of an admin client: `admin_url` (the CLI's flag, if given) over
    /// client.conf's `webServiceUrl` over `default_url`, and the flags over the file.
    pub async fn resolve_admin(&self, admin_url: Option<&str>, default_url: &str) -> Result<ClientConf, ClientError> {
        let mut conf =
            self.merged(ClientConf { web_service_url: admin_url.map(str::to_owned), ..ClientConf::default() }).await?;
        conf.web_service_url.get_or_insert_with(|| default_url.to_owned());
        Ok(conf)
    }

    /// client.conf (if given) overridden by these flags and by `urls` (the URLs the CLI's own
    /// flags give).
    async fn merged(&self, urls: ClientConf) -> Result<ClientConf, ClientError> {
        let file = match &self.client_conf {
            Some(path) => ClientConf::read_async(path).await?,
            None => ClientConf::default(),
        };
        let flags = ClientConf {
            auth_plugin: self.auth_plugin.clone(),
            auth_params: self.auth_params.clone(),
            tls_trust_certs_file_path: self.tls_trust_cert_path.clone(),
            tls_allow_insecure_connection: self.tls_allow_insecure.then_some(true),
            tls_hostname_verification: self.tls_hostname_verification,
            ..urls
        };
        Ok(file.overridden_by(flags))
    }
}

impl fmt::Debug for ConnectionArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionArgs")
            .field("client_conf", &self.client_conf)
            .field("auth_plugin", &self.auth_plugin)
            .field("auth_params", &self.auth_params.as_ref().map(|_| format_args!("<redacted>")))
            .field("tls_trust_cert_path", &self.tls_trust_cert_path)
            .field("tls_allow_insecure", &self.tls_allow_insecure)
            .field("tls_hostname_verification", &self.tls_hostname_verification)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[arg(long)]
        url: Option<String>,
        #[command(flatten)]
        connection: ConnectionArgs,
    }

    fn resolve(args: &[&str]) -> Result<(String, ClientConfig), ClientError> {
        let cli = Cli::try_parse_from(std::iter::once("cli").chain(args.iter().copied())).expect("flags parse");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(cli.connection.resolve(cli.url.as_deref(), "pulsar://localhost:6650"))
    }

    #[test]
    fn defaults_without_flags_or_file() {
        let (url, config) = resolve(&[]).expect("resolves");
        assert_eq!(url, "pulsar://localhost:6650");
        assert!(config.authentication.is_none());
        assert!(config.tls_hostname_verification);
        assert!(!config.tls_allow_insecure_connection);
    }

    #[test]
    fn flags_win_over_the_client_conf() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("client.conf");
        std::fs::write(
            &path,
            "brokerServiceUrl=pulsar+ssl://file-host:6651\nauthPlugin=basic\nauthParams=userId:u,password:p\n\
             tlsTrustCertsFilePath=/file/ca.pem\n",
        )
        .expect("write");
        let conf = path.to_str().expect("utf-8 path");

        let (url, config) = resolve(&["--client-conf", conf]).expect("resolves");
        assert_eq!(url, "pulsar+ssl://file-host:6651");
        assert_eq!(config.authentication.as_ref().map(|auth| auth.method_name()), Some("basic"));
        assert_eq!(config.tls_trust_certs_file_path, Some(PathBuf::from("/file/ca.pem")));

        let (url, config) = resolve(&[
            "--client-conf",
            conf,
            "--url",
            "pulsar://flag-host:6650",
            "--auth-plugin",
            "org.apache.pulsar.client.impl.auth.AuthenticationToken",
            "--auth-params",
            "token:abc",
            "--trust-cert-file",
            "/flag/ca.pem",
            "--tls-allow-insecure",
            "--tls-enable-hostname-verification",
            "false",
        ])
        .expect("resolves");
        assert_eq!(url, "pulsar://flag-host:6650");
        assert_eq!(config.authentication.as_ref().map(|auth| auth.method_name()), Some("token"));
        assert_eq!(config.tls_trust_certs_file_path, Some(PathBuf::from("/flag/ca.pem")));
        assert!(config.tls_allow_insecure_connection);
        assert!(!config.tls_hostname_verification);
    }

    #[test]
    fn bad_flags_are_errors() {
        assert!(matches!(resolve(&["--auth-plugin", "kerberos"]), Err(ClientError::UnknownAuthPlugin { .. })));
        assert!(matches!(resolve(&["--auth-params", "token:x"]), Err(ClientError::InvalidConfig { .. })));
        assert!(matches!(resolve(&["--client-conf", "/nonexistent.conf"]), Err(ClientError::ReadFile { .. })));
    }

    #[test]
    fn debug_hides_the_auth_params() {
        let args = ConnectionArgs { auth_params: Some("token:secret".into()), ..Default::default() };
        assert!(!format!("{args:?}").contains("secret"));
    }
}
