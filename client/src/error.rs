//! The client's one error type.
//!
//! Broker-reported failures keep Pulsar's `ServerError` code and message
//! ([`ClientError::Server`]); [`ClientError::from_server`] is the one place a wire code becomes
//! an error. Errors about a single received message ([`ClientError::is_message_error`]) leave
//! the consumer usable; the others end the operation, and those about the connection end every
//! producer and consumer on it.
//!
//! A variant with a `#[source]` does not repeat it in its message: print the chain (as
//! `anyhow`'s `{:#}` does) to see the cause.

use std::path::PathBuf;
use std::time::Duration;

use magnetar_proto::pulsar::ServerError;
use magnetar_proto::FrameError;

use crate::message::MessageId;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid service URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },

    #[error("invalid topic name {topic:?}: {reason}")]
    InvalidTopic { topic: String, reason: &'static str },

    #[error("invalid setting {setting}: {reason}")]
    InvalidConfig { setting: &'static str, reason: &'static str },

    #[error("cannot connect to {broker}")]
    Connect {
        broker: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{operation} on {broker} timed out after {after:?}")]
    Timeout { broker: String, operation: String, after: Duration },

    /// The broker answered with an error: Pulsar's code and the broker's message.
    #[error("broker error {}: {message}", code.as_str_name())]
    Server { code: ServerError, message: String },

    #[error("connection to {broker} closed: {reason}")]
    Disconnected { broker: String, reason: String },

    #[error("cannot encode a frame for {broker}")]
    Encode {
        broker: String,
        #[source]
        source: FrameError,
    },

    #[error("unexpected answer from {broker}: expected {expected}, got {got}")]
    UnexpectedResponse { broker: String, expected: &'static str, got: String },

    #[error("lookup of {topic} was redirected more than {hops} times")]
    TooManyRedirects { topic: String, hops: u32 },

    #[error("not supported yet: {what}")]
    Unsupported { what: String },

    #[error("message {id} is compressed with {compression} and cannot be decompressed: {reason}")]
    UnsupportedCompression { id: MessageId, compression: String, reason: String },

    #[error("cannot compress a payload with {codec}")]
    Compression {
        codec: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("message {id} uses {feature}, which this client does not support yet")]
    UnsupportedMessage { id: MessageId, feature: &'static str },

    #[error("message {id} is malformed: {reason}")]
    MalformedMessage { id: MessageId, reason: String },

    #[error("message {id} arrived corrupted")]
    CorruptMessage {
        id: MessageId,
        #[source]
        source: FrameError,
    },

    /// A custom message router chose a partition the topic does not have.
    #[error("the message router chose partition {partition}, but the topic has {partitions}")]
    InvalidPartition { partition: u32, partitions: u32 },

    #[error("message of {size} bytes exceeds the broker's limit of {max} bytes")]
    MessageTooLarge { size: usize, max: usize },

    #[error("producer {producer} on {topic} is closed: {reason}")]
    ProducerClosed { producer: String, topic: String, reason: String },

    #[error("consumer of subscription {subscription} on {topic} is closed: {reason}")]
    ConsumerClosed { subscription: String, topic: String, reason: String },

    #[error("send failed: {reason}")]
    SendFailed { reason: String },
    /// The admin REST API refused a call (its status and its own reason), or could not be
    /// reached (status 0).
    #[error("{}", admin_message(*.status, .reason))]
    Admin { status: u16, reason: String },

    /// A value that does not fit its schema, or a payload that does not decode with the
    /// schema it was written with.
    #[error("schema: {reason}")]
    Schema { reason: String },
    #[error("cannot encode or decode a message as JSON")]
    Json {
        #[source]
        source: serde_json::Error,
    },

    #[error("{operation} is not allowed on a {subscription_type} subscription")]
    NotAllowed { operation: &'static str, subscription_type: &'static str },

    /// A file the settings name (CA certificates, a client certificate or key, a token file,
    /// client.conf) cannot be read.
    #[error("cannot read {what} {}", path.display())]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The TLS settings cannot be turned into a TLS client: no usable certificate in a file, a
    /// key that does not match its certificate, no trusted roots.
    #[error("invalid TLS setup: {reason}")]
    TlsConfig {
        reason: String,
        #[source]
        source: Option<rustls::Error>,
    },

    /// The TLS handshake failed: the broker's certificate is not trusted or not for its name,
    /// or the broker refused the client's certificate. Not retried: it fails the same way again.
    #[error("TLS handshake with {broker} failed")]
    TlsHandshake {
        broker: String,
        #[source]
        source: std::io::Error,
    },

    /// The broker refused the credentials in CONNECT (Pulsar's `AuthenticationError`).
    #[error("{broker} refused authentication with method {method:?}: {message}")]
    AuthenticationFailed { broker: String, method: String, message: String },

    /// The authentication provider could not produce its data (a token file that is missing
    /// or empty, a failing token function). Never carries the secret itself.
    #[error("cannot get the {method} authentication data: {reason}")]
    AuthenticationData { method: String, reason: String },

    #[error(
        "unknown authentication plugin {plugin:?} (known: token, basic, tls, or Pulsar's \
         org.apache.pulsar.client.impl.auth.AuthenticationToken, AuthenticationBasic, AuthenticationTls)"
    )]
    UnknownAuthPlugin { plugin: String },

    /// Authentication parameters that the plugin cannot use. The reason never quotes a value.
    #[error("invalid authentication parameters for the {plugin} plugin: {reason}")]
    InvalidAuthParams { plugin: &'static str, reason: String },

    /// A client.conf line with a value that does not fit its key.
    #[error("{}:{line}: invalid {key}: {reason}", path.display())]
    InvalidClientConf { path: PathBuf, line: usize, key: String, reason: String },

    /// A client.conf that is not a readable properties file.
    #[error("cannot parse {} as a properties file", path.display())]
    ClientConfSyntax {
        path: PathBuf,
        #[source]
        source: java_properties::PropertiesError,
    },
}

impl ClientError {
    /// The error for a Pulsar `ServerError` code and message as the broker sent them. Codes
    /// this client does not know become `UnknownError`, with the number kept in the message.
    pub fn from_server(code: i32, message: impl Into<String>) -> Self {
        let message = message.into();
        match ServerError::try_from(code) {
            Ok(code) => ClientError::Server { code, message },
            Err(_) => ClientError::Server {
                code: ServerError::UnknownError,
                message: format!("(unknown error code {code}) {message}"),
            },
        }
    }

    /// The broker's error code, when the broker reported this error.
    pub fn server_code(&self) -> Option<ServerError> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            ClientError::AuthenticationFailed { .. } => Some(ServerError::AuthenticationError),
            _ => None,
        }
    }

    /// True when the error is about the client's credentials or TLS setup: retrying does not
    /// help until someone changes them, so it is worth a warning when it keeps a producer or
    /// consumer from reconnecting.
    pub fn is_security_error(&self) -> bool {
        matches!(
            self,
            ClientError::AuthenticationFailed { .. }
                | ClientError::AuthenticationData { .. }
                | ClientError::TlsHandshake { .. }
                | ClientError::TlsConfig { .. }
        ) || self.server_code() == Some(ServerError::AuthorizationError)
    }

    /// True when the error concerns one received message only: the consumer can go on
    /// receiving the next ones.
    pub fn is_message_error(&self) -> bool {
        matches!(
            self,
            ClientError::UnsupportedCompression { .. }
                | ClientError::UnsupportedMessage { .. }
                | ClientError::MalformedMessage { .. }
                | ClientError::CorruptMessage { .. }
        )
    }
}

pub(crate) use magnetar_proto::error_chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_server_code_keeps_code_and_message() {
        let error = ClientError::from_server(ServerError::TopicNotFound as i32, "no such topic");
        assert_eq!(error.server_code(), Some(ServerError::TopicNotFound));
        assert_eq!(error.to_string(), "broker error TOPIC_NOT_FOUND: no such topic");
    }

    #[test]
    fn unknown_server_code_becomes_unknown_error_with_number() {
        let error = ClientError::from_server(4242, "odd");
        assert_eq!(error.server_code(), Some(ServerError::UnknownError));
        assert!(error.to_string().contains("4242"));
    }

    #[test]
    fn error_chain_names_every_cause() {
        let error = ClientError::Connect {
            broker: "pulsar://b:6650".into(),
            source: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
        };
        assert_eq!(error_chain(&error), "cannot connect to pulsar://b:6650: refused");
    }
}

fn admin_message(status: u16, reason: &str) -> String {
    if status == 0 {
        format!("admin API unreachable: {reason}")
    } else {
        format!("admin API answered {status}: {reason}")
    }
}
