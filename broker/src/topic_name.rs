//! Topic names: the broker uses the shared definition in magnetar-proto.

pub use magnetar_proto::topic_name::{partition_index, partition_topic_name, TopicName, TopicNameError};

use crate::error::BrokerError;

impl From<TopicNameError> for BrokerError {
    fn from(error: TopicNameError) -> Self {
        BrokerError::InvalidTopicName { name: error.name, reason: error.reason }
    }
}
