//! Topic names: the client checks them with the shared definition in magnetar-proto, so a
//! name the client accepts is one the broker accepts.

pub use magnetar_proto::topic_name::{TopicName, TopicNameError};

use crate::error::ClientError;

impl From<TopicNameError> for ClientError {
    fn from(error: TopicNameError) -> Self {
        ClientError::InvalidTopic { topic: error.name, reason: error.reason }
    }
}
