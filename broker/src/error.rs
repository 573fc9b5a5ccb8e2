//! The broker's errors and their one mapping to Pulsar's wire error codes.

use magnetar_proto::pulsar::ServerError;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName { name: String, reason: &'static str },
    #[error("namespace {namespace} does not exist")]
    NamespaceNotFound { namespace: String },
    #[error("topic {topic} not found")]
    TopicNotFound { topic: String },
    #[error("subscription {subscription} on {topic} already has an exclusive consumer")]
    ConsumerBusy { topic: String, subscription: String },
    /// A subscription refusing a consumer it cannot take (another type or mode).
    #[error("{what}")]
    SubscriptionBusy { what: String },
    /// Key_Shared ranges a consumer declared that cannot be assigned.
    #[error("{what}")]
    ConsumerAssign { what: String },
    /// Unsubscribing while other consumers are connected.
    #[error("{what}")]
    UnsubscribeRefused { what: String },
    #[error("producer {producer} is already connected to {topic}")]
    ProducerBusy { topic: String, producer: String },
    /// The topic's max producers policy.
    #[error("Topic reached max producers limit ({max}) on {topic}")]
    TooManyProducers { topic: String, max: u32 },
    /// The topic's or subscription's max consumers policy.
    #[error("{what}")]
    TooManyConsumers { what: String },
    /// A backlog quota with `producer_exception` is exceeded: no new producer, no new send.
    #[error("Cannot create producer on topic with backlog quota exceeded: {topic}")]
    BacklogQuotaExceeded { topic: String },
    #[error("producer refused on {topic}: {reason}")]
    ProducerFenced { topic: String, reason: String },
    #[error("message {sequence_id} is a duplicate of one still being persisted; resend it")]
    DuplicateInFlight { sequence_id: u64 },
    #[error("{what}")]
    AlreadyExists { what: String },
    /// An admin resource (cluster, tenant, policy) that does not exist: 404.
    #[error("{what}")]
    NotFound { what: String },
    /// A change that conflicts with what exists (a tenant that still has namespaces): 409.
    #[error("{what}")]
    Conflict { what: String },
    #[error("{what}")]
    InvalidArgument { what: String },
    #[error("{what} is not supported yet")]
    NotSupported { what: String },
    #[error("{what}")]
    NotAllowed { what: String },
    #[error("storage: {0}")]
    Storage(#[from] magnetar_bookie::BookieError),
    #[error("metadata: {0}")]
    Meta(#[from] magnetar_meta::MetaError),
    #[error("corrupt stored record {what}: {reason}")]
    Corrupt { what: String, reason: String },
    /// A metadata write failed without an answer and reading it back failed too: whether it
    /// was applied is unknown.
    #[error("write of {what} may or may not have been applied: {reason}")]
    SnapshotUnknown { what: String, reason: String },
    #[error("broker is shutting down")]
    ShuttingDown,
    /// The topic's bundle is not served here (another broker owns it, or it is moving):
    /// clients look the topic up again.
    #[error("{what}")]
    ServiceUnitNotReady { what: String },
    /// The topic closed for a hand-over; the publish was not stored.
    #[error("topic {topic} is closed here and moving to another broker")]
    TopicFenced { topic: String },
    /// The topic was terminated: nothing more is published to it.
    #[error("Topic {topic} was already terminated")]
    TopicTerminated { topic: String },
    /// A schema the topic's compatibility rules refuse: 409, IncompatibleSchema.
    #[error("{what}")]
    IncompatibleSchema { what: String },
    /// A schema definition that is not valid for its type: 422, IncompatibleSchema.
    #[error("invalid schema: {what}")]
    InvalidSchema { what: String },
    /// Credentials missing, malformed, expired or wrong: 401, AuthenticationError.
    #[error("{what}")]
    Unauthenticated { what: String },
    /// A role without the permission asked for: 403, AuthorizationError.
    #[error("{what}")]
    Unauthorized { what: String },
}

impl BrokerError {
    /// The Pulsar error code a client receives for this error.
    pub fn server_error(&self) -> ServerError {
        match self {
            BrokerError::InvalidTopicName { .. } => ServerError::InvalidTopicName,
            BrokerError::NamespaceNotFound { .. } | BrokerError::TopicNotFound { .. } => ServerError::TopicNotFound,
            BrokerError::NotFound { .. } => ServerError::TopicNotFound,
            BrokerError::Conflict { .. } => ServerError::NotAllowedError,
            BrokerError::ConsumerBusy { .. } | BrokerError::SubscriptionBusy { .. } => ServerError::ConsumerBusy,
            BrokerError::ConsumerAssign { .. } => ServerError::ConsumerAssignError,
            BrokerError::UnsubscribeRefused { .. } => ServerError::MetadataError,
            BrokerError::ProducerBusy { .. } | BrokerError::TooManyProducers { .. } => ServerError::ProducerBusy,
            BrokerError::TooManyConsumers { .. } => ServerError::ConsumerBusy,
            BrokerError::BacklogQuotaExceeded { .. } => ServerError::ProducerBlockedQuotaExceededException,
            BrokerError::ProducerFenced { .. } => ServerError::ProducerFenced,
            BrokerError::AlreadyExists { .. } | BrokerError::InvalidArgument { .. } => ServerError::NotAllowedError,
            BrokerError::NotSupported { .. } | BrokerError::NotAllowed { .. } => ServerError::NotAllowedError,
            BrokerError::Storage(_) | BrokerError::DuplicateInFlight { .. } => ServerError::PersistenceError,
            BrokerError::Meta(_) | BrokerError::Corrupt { .. } | BrokerError::SnapshotUnknown { .. } => {
                ServerError::MetadataError
            }
            BrokerError::ShuttingDown | BrokerError::ServiceUnitNotReady { .. } => ServerError::ServiceNotReady,
            BrokerError::TopicFenced { .. } => ServerError::ServiceNotReady,
            BrokerError::TopicTerminated { .. } => ServerError::TopicTerminatedError,
            BrokerError::Unauthenticated { .. } => ServerError::AuthenticationError,
            BrokerError::Unauthorized { .. } => ServerError::AuthorizationError,
            BrokerError::IncompatibleSchema { .. } | BrokerError::InvalidSchema { .. } => {
                ServerError::IncompatibleSchema
            }
        }
    }
}
