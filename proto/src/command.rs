//! Constructors for the commands broker and client send, so that each call site states only
//! what varies. Every constructor sets the envelope's type to match the command it carries.

use crate::pulsar::{self as pb, base_command::Type, BaseCommand};

/// The request id a command carries, read from the body its type names: the requests a
/// broker answers (for error answers, even to commands it does not support) and the responses
/// a client matches to its pending requests. None for commands without one (SEND, MESSAGE,
/// FLOW, ...), for ACK (its request id asks for an ACK_RESPONSE, answered by the ack handling
/// itself) and for a command whose body is missing.
pub fn request_id(command: &BaseCommand) -> Option<u64> {
    let Ok(command_type) = Type::try_from(command.command_type) else { return None };
    match command_type {
        Type::Lookup => command.lookup_topic.as_ref().map(|c| c.request_id),
        Type::PartitionedMetadata => command.partition_metadata.as_ref().map(|c| c.request_id),
        Type::Producer => command.producer.as_ref().map(|c| c.request_id),
        Type::Subscribe => command.subscribe.as_ref().map(|c| c.request_id),
        Type::CloseProducer => command.close_producer.as_ref().map(|c| c.request_id),
        Type::CloseConsumer => command.close_consumer.as_ref().map(|c| c.request_id),
        Type::Unsubscribe => command.unsubscribe.as_ref().map(|c| c.request_id),
        Type::Seek => command.seek.as_ref().map(|c| c.request_id),
        Type::GetLastMessageId => command.get_last_message_id.as_ref().map(|c| c.request_id),
        Type::GetTopicsOfNamespace => command.get_topics_of_namespace.as_ref().map(|c| c.request_id),
        Type::GetSchema => command.get_schema.as_ref().map(|c| c.request_id),
        Type::GetOrCreateSchema => command.get_or_create_schema.as_ref().map(|c| c.request_id),
        Type::ConsumerStats => command.consumer_stats.as_ref().map(|c| c.request_id),
        Type::NewTxn => command.new_txn.as_ref().map(|c| c.request_id),
        Type::AddPartitionToTxn => command.add_partition_to_txn.as_ref().map(|c| c.request_id),
        Type::AddSubscriptionToTxn => command.add_subscription_to_txn.as_ref().map(|c| c.request_id),
        Type::EndTxn => command.end_txn.as_ref().map(|c| c.request_id),
        Type::EndTxnOnPartition => command.end_txn_on_partition.as_ref().map(|c| c.request_id),
        Type::EndTxnOnSubscription => command.end_txn_on_subscription.as_ref().map(|c| c.request_id),
        Type::TcClientConnectRequest => command.tc_client_connect_request.as_ref().map(|c| c.request_id),
        Type::WatchTopicList => command.watch_topic_list.as_ref().map(|c| c.request_id),
        Type::WatchTopicListClose => command.watch_topic_list_close.as_ref().map(|c| c.request_id),
        Type::ScalableTopicSubscribe => command.scalable_topic_subscribe.as_ref().map(|c| c.request_id),
        Type::Success => command.success.as_ref().map(|c| c.request_id),
        Type::Error => command.error.as_ref().map(|c| c.request_id),
        Type::ProducerSuccess => command.producer_success.as_ref().map(|c| c.request_id),
        Type::LookupResponse => command.lookup_topic_response.as_ref().map(|c| c.request_id),
        Type::PartitionedMetadataResponse => command.partition_metadata_response.as_ref().map(|c| c.request_id),
        Type::GetLastMessageIdResponse => command.get_last_message_id_response.as_ref().map(|c| c.request_id),
        Type::GetTopicsOfNamespaceResponse => command.get_topics_of_namespace_response.as_ref().map(|c| c.request_id),
        Type::GetSchemaResponse => command.get_schema_response.as_ref().map(|c| c.request_id),
        Type::GetOrCreateSchemaResponse => command.get_or_create_schema_response.as_ref().map(|c| c.request_id),
        Type::ConsumerStatsResponse => command.consumer_stats_response.as_ref().map(|c| c.request_id),
        Type::WatchTopicListSuccess => command.watch_topic_list_success.as_ref().map(|c| c.request_id),
        Type::NewTxnResponse => command.new_txn_response.as_ref().map(|c| c.request_id),
        Type::TcClientConnectResponse => command.tc_client_connect_response.as_ref().map(|c| c.request_id),
        Type::AckResponse => command.ack_response.as_ref().and_then(|c| c.request_id),
        _ => None,
    }
}

fn base(command_type: Type) -> BaseCommand {
    BaseCommand { command_type: command_type as i32, ..Default::default() }
}

pub fn connect(client_version: &str, auth_method_name: Option<String>, auth_data: Option<Vec<u8>>) -> BaseCommand {
    BaseCommand {
        connect: Some(pb::CommandConnect {
            client_version: client_version.to_owned(),
            protocol_version: Some(crate::PROTOCOL_VERSION),
            auth_method_name,
            auth_data,
            ..Default::default()
        }),
        ..base(Type::Connect)
    }
}

/// CONNECTED, with the feature flags of what the broker supports (Pulsar sets them so that a
/// client knows, for example, whether it may watch a namespace's topic list).
pub fn connected(
    server_version: &str,
    protocol_version: i32,
    max_message_size: i32,
    feature_flags: Option<pb::FeatureFlags>,
) -> BaseCommand {
    BaseCommand {
        connected: Some(pb::CommandConnected {
            server_version: server_version.to_owned(),
            protocol_version: Some(protocol_version),
            max_message_size: Some(max_message_size),
            feature_flags,
        }),
        ..base(Type::Connected)
    }
}

/// Asks the client for fresh credentials of `method` (its token expired), as Pulsar's broker
/// does: the challenge data is `refresh`.
pub fn auth_challenge(server_version: &str, method: &str, protocol_version: i32) -> BaseCommand {
    BaseCommand {
        auth_challenge: Some(pb::CommandAuthChallenge {
            server_version: Some(server_version.to_owned()),
            challenge: Some(pb::AuthData {
                auth_method_name: Some(method.to_owned()),
                auth_data: Some(b"refresh".to_vec()),
            }),
            protocol_version: Some(protocol_version),
        }),
        ..base(Type::AuthChallenge)
    }
}

pub fn ping() -> BaseCommand {
    BaseCommand { ping: Some(pb::CommandPing {}), ..base(Type::Ping) }
}

pub fn pong() -> BaseCommand {
    BaseCommand { pong: Some(pb::CommandPong {}), ..base(Type::Pong) }
}

pub fn lookup(topic: &str, request_id: u64, authoritative: bool) -> BaseCommand {
    BaseCommand {
        lookup_topic: Some(pb::CommandLookupTopic {
            topic: topic.to_owned(),
            request_id,
            authoritative: Some(authoritative),
            ..Default::default()
        }),
        ..base(Type::Lookup)
    }
}

pub fn lookup_connect(request_id: u64, broker_service_url: &str) -> BaseCommand {
    BaseCommand {
        lookup_topic_response: Some(pb::CommandLookupTopicResponse {
            broker_service_url: Some(broker_service_url.to_owned()),
            response: Some(pb::command_lookup_topic_response::LookupType::Connect as i32),
            request_id,
            authoritative: Some(true),
            proxy_through_service_url: Some(false),
            ..Default::default()
        }),
        ..base(Type::LookupResponse)
    }
}

/// A LOOKUP answer sending the client to another broker, which it asks again with
/// `authoritative` set.
pub fn lookup_redirect(request_id: u64, broker_service_url: &str, authoritative: bool) -> BaseCommand {
    BaseCommand {
        lookup_topic_response: Some(pb::CommandLookupTopicResponse {
            broker_service_url: Some(broker_service_url.to_owned()),
            response: Some(pb::command_lookup_topic_response::LookupType::Redirect as i32),
            request_id,
            authoritative: Some(authoritative),
            proxy_through_service_url: Some(false),
            ..Default::default()
        }),
        ..base(Type::LookupResponse)
    }
}

pub fn lookup_failed(request_id: u64, error: pb::ServerError, message: &str) -> BaseCommand {
    BaseCommand {
        lookup_topic_response: Some(pb::CommandLookupTopicResponse {
            response: Some(pb::command_lookup_topic_response::LookupType::Failed as i32),
            request_id,
            error: Some(error as i32),
            message: Some(message.to_owned()),
            ..Default::default()
        }),
        ..base(Type::LookupResponse)
    }
}

pub fn partitioned_metadata(topic: &str, request_id: u64) -> BaseCommand {
    BaseCommand {
        partition_metadata: Some(pb::CommandPartitionedTopicMetadata {
            topic: topic.to_owned(),
            request_id,
            ..Default::default()
        }),
        ..base(Type::PartitionedMetadata)
    }
}

pub fn partitioned_metadata_response(request_id: u64, partitions: u32) -> BaseCommand {
    BaseCommand {
        partition_metadata_response: Some(pb::CommandPartitionedTopicMetadataResponse {
            partitions: Some(partitions),
            request_id,
            response: Some(pb::command_partitioned_topic_metadata_response::LookupType::Success as i32),
            ..Default::default()
        }),
        ..base(Type::PartitionedMetadataResponse)
    }
}

pub fn partitioned_metadata_failed(request_id: u64, error: pb::ServerError, message: &str) -> BaseCommand {
    BaseCommand {
        partition_metadata_response: Some(pb::CommandPartitionedTopicMetadataResponse {
            request_id,
            response: Some(pb::command_partitioned_topic_metadata_response::LookupType::Failed as i32),
            error: Some(error as i32),
            message: Some(message.to_owned()),
            ..Default::default()
        }),
        ..base(Type::PartitionedMetadataResponse)
    }
}

pub fn producer(topic: &str, producer_id: u64, request_id: u64, producer_name: Option<String>) -> BaseCommand {
    BaseCommand {
        producer: Some(pb::CommandProducer {
            topic: topic.to_owned(),
            producer_id,
            request_id,
            user_provided_producer_name: Some(producer_name.is_some()),
            producer_name,
            ..Default::default()
        }),
        ..base(Type::Producer)
    }
}

pub fn producer_success(request_id: u64, producer_name: &str, last_sequence_id: i64) -> BaseCommand {
    BaseCommand {
        producer_success: Some(pb::CommandProducerSuccess {
            request_id,
            producer_name: producer_name.to_owned(),
            last_sequence_id: Some(last_sequence_id),
            producer_ready: Some(true),
            ..Default::default()
        }),
        ..base(Type::ProducerSuccess)
    }
}

pub fn send(producer_id: u64, sequence_id: u64, num_messages: i32) -> BaseCommand {
    BaseCommand {
        send: Some(pb::CommandSend {
            producer_id,
            sequence_id,
            num_messages: Some(num_messages),
            ..Default::default()
        }),
        ..base(Type::Send)
    }
}

pub fn send_receipt(
    producer_id: u64,
    sequence_id: u64,
    highest_sequence_id: u64,
    ledger_id: u64,
    entry_id: u64,
) -> BaseCommand {
    BaseCommand {
        send_receipt: Some(pb::CommandSendReceipt {
            producer_id,
            sequence_id,
            message_id: Some(message_id(ledger_id, entry_id)),
            highest_sequence_id: Some(highest_sequence_id),
        }),
        ..base(Type::SendReceipt)
    }
}

pub fn send_error(producer_id: u64, sequence_id: u64, error: pb::ServerError, message: &str) -> BaseCommand {
    BaseCommand {
        send_error: Some(pb::CommandSendError {
            producer_id,
            sequence_id,
            error: error as i32,
            message: message.to_owned(),
        }),
        ..base(Type::SendError)
    }
}

pub fn message_id(ledger_id: u64, entry_id: u64) -> pb::MessageIdData {
    pb::MessageIdData { ledger_id, entry_id, ..Default::default() }
}

pub fn subscribe(
    topic: &str,
    subscription: &str,
    sub_type: pb::command_subscribe::SubType,
    consumer_id: u64,
    request_id: u64,
    initial_position: pb::command_subscribe::InitialPosition,
) -> BaseCommand {
    BaseCommand {
        subscribe: Some(pb::CommandSubscribe {
            topic: topic.to_owned(),
            subscription: subscription.to_owned(),
            sub_type: sub_type as i32,
            consumer_id,
            request_id,
            initial_position: Some(initial_position as i32),
            ..Default::default()
        }),
        ..base(Type::Subscribe)
    }
}

pub fn flow(consumer_id: u64, message_permits: u32) -> BaseCommand {
    BaseCommand { flow: Some(pb::CommandFlow { consumer_id, message_permits }), ..base(Type::Flow) }
}

pub fn message(consumer_id: u64, ledger_id: u64, entry_id: u64, redelivery_count: u32) -> BaseCommand {
    BaseCommand {
        message: Some(pb::CommandMessage {
            consumer_id,
            message_id: message_id(ledger_id, entry_id),
            redelivery_count: Some(redelivery_count),
            ..Default::default()
        }),
        ..base(Type::Message)
    }
}

pub fn ack(consumer_id: u64, ack_type: pb::command_ack::AckType, message_ids: Vec<pb::MessageIdData>) -> BaseCommand {
    BaseCommand {
        ack: Some(pb::CommandAck {
            consumer_id,
            ack_type: ack_type as i32,
            message_id: message_ids,
            ..Default::default()
        }),
        ..base(Type::Ack)
    }
}

pub fn close_producer(producer_id: u64, request_id: u64) -> BaseCommand {
    BaseCommand {
        close_producer: Some(pb::CommandCloseProducer { producer_id, request_id, ..Default::default() }),
        ..base(Type::CloseProducer)
    }
}

pub fn close_consumer(consumer_id: u64, request_id: u64) -> BaseCommand {
    BaseCommand {
        close_consumer: Some(pb::CommandCloseConsumer { consumer_id, request_id, ..Default::default() }),
        ..base(Type::CloseConsumer)
    }
}

/// The consumer read everything of a terminated topic.
pub fn reached_end_of_topic(consumer_id: u64) -> BaseCommand {
    BaseCommand {
        reached_end_of_topic: Some(pb::CommandReachedEndOfTopic { consumer_id }),
        ..base(Type::ReachedEndOfTopic)
    }
}

pub fn success(request_id: u64) -> BaseCommand {
    BaseCommand { success: Some(pb::CommandSuccess { request_id, schema: None }), ..base(Type::Success) }
}

pub fn error(request_id: u64, error: pb::ServerError, message: &str) -> BaseCommand {
    BaseCommand {
        error: Some(pb::CommandError { request_id, error: error as i32, message: message.to_owned() }),
        ..base(Type::Error)
    }
}

pub fn get_last_message_id_response(request_id: u64, ledger_id: u64, entry_id: u64) -> BaseCommand {
    BaseCommand {
        get_last_message_id_response: Some(pb::CommandGetLastMessageIdResponse {
            last_message_id: message_id(ledger_id, entry_id),
            request_id,
            consumer_mark_delete_position: None,
        }),
        ..base(Type::GetLastMessageIdResponse)
    }
}

pub fn topics_of_namespace_response(request_id: u64, topics: Vec<String>) -> BaseCommand {
    BaseCommand {
        get_topics_of_namespace_response: Some(pb::CommandGetTopicsOfNamespaceResponse {
            request_id,
            topics,
            filtered: Some(false),
            changed: Some(true),
            topics_hash: None,
        }),
        ..base(Type::GetTopicsOfNamespaceResponse)
    }
}

pub fn redeliver_unacknowledged_messages(consumer_id: u64, message_ids: Vec<pb::MessageIdData>) -> BaseCommand {
    BaseCommand {
        redeliver_unacknowledged_messages: Some(pb::CommandRedeliverUnacknowledgedMessages {
            consumer_id,
            message_ids,
            consumer_epoch: None,
        }),
        ..base(Type::RedeliverUnacknowledgedMessages)
    }
}

pub fn get_last_message_id(consumer_id: u64, request_id: u64) -> BaseCommand {
    BaseCommand {
        get_last_message_id: Some(pb::CommandGetLastMessageId { consumer_id, request_id }),
        ..base(Type::GetLastMessageId)
    }
}

/// SEEK to a message id (`message_id`) or to the first message published at or after
/// `publish_time` (milliseconds since the Unix epoch).
pub fn seek(
    consumer_id: u64,
    request_id: u64,
    message_id: Option<pb::MessageIdData>,
    publish_time: Option<u64>,
) -> BaseCommand {
    BaseCommand {
        seek: Some(pb::CommandSeek { consumer_id, request_id, message_id, message_publish_time: publish_time }),
        ..base(Type::Seek)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_carry_their_request_id() {
        assert_eq!(request_id(&lookup("persistent://t/n/x", 7, false)), Some(7));
        assert_eq!(request_id(&producer("persistent://t/n/x", 1, 8, None)), Some(8));
        assert_eq!(request_id(&close_consumer(1, 9)), Some(9));
        assert_eq!(request_id(&success(10)), Some(10));
        assert_eq!(request_id(&error(11, pb::ServerError::UnknownError, "no")), Some(11));
        assert_eq!(request_id(&lookup_connect(12, "pulsar://b:6650")), Some(12));
        assert_eq!(request_id(&partitioned_metadata_response(13, 4)), Some(13));
    }

    #[test]
    fn commands_without_a_request_id_have_none() {
        assert_eq!(request_id(&ping()), None);
        assert_eq!(request_id(&flow(1, 100)), None);
        assert_eq!(request_id(&send(1, 2, 1)), None);
        let body_missing = BaseCommand { command_type: Type::Lookup as i32, ..Default::default() };
        assert_eq!(request_id(&body_missing), None);
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// Every frame is decoded into a BaseCommand and commands move through channels by
    /// value: the envelope must stay small (the commands added later are boxed).
    #[test]
    fn the_envelope_stays_small() {
        let size = std::mem::size_of::<BaseCommand>();
        assert!(size <= 8 * 1024, "BaseCommand is {size} bytes");
    }
}
