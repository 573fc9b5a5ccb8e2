//! The schema commands of a connection: the schema a PRODUCER or SUBSCRIBE carries, checked
//! and registered through the registry ([`crate::schema`]), and GET_SCHEMA /
//! GET_OR_CREATE_SCHEMA. Refusals answer IncompatibleSchema with the reason.

use magnetar_proto::pulsar::{self as pb, base_command::Type, BaseCommand};
use tracing::info;

use super::connection::Connection;
use crate::error::BrokerError;
use crate::schema::{schema_id, version_bytes, version_from_bytes, SchemaData};
use crate::security::authz::TopicAction;
use crate::topic_name::TopicName;

impl Connection {
    /// Who registers a schema, for its record.
    fn schema_user(&self) -> String {
        self.identity.role.clone().unwrap_or_else(|| "anonymous".to_owned())
    }

    /// The version of the schema a producer sent (registered if new and allowed), as the wire
    /// carries it; `None` without a schema.
    pub(super) async fn producer_schema(
        &self,
        topic: &TopicName,
        schema: Option<&pb::Schema>,
    ) -> Result<Option<Vec<u8>>, BrokerError> {
        let schema = SchemaData::from_wire(schema)?;
        let policy = self.service.schema_policy(topic);
        let version =
            self.service.schemas.for_producer(&schema_id(topic), schema.as_ref(), policy, &self.schema_user()).await?;
        Ok(version.map(version_bytes))
    }

    /// Checks (or, on a topic without one, registers) the schema a consumer sent.
    pub(super) async fn consumer_schema(
        &self,
        topic: &TopicName,
        schema: Option<&pb::Schema>,
    ) -> Result<(), BrokerError> {
        let schema = SchemaData::from_wire(schema)?;
        let policy = self.service.schema_policy(topic);
        self.service.schemas.for_consumer(&schema_id(topic), schema.as_ref(), policy, &self.schema_user()).await
    }

    /// GET_SCHEMA: the latest schema, or the version asked for.
    pub(super) async fn on_get_schema(&self, request: pb::CommandGetSchema) {
        let request_id = request.request_id;
        let answer = async {
            let topic = TopicName::parse(&request.topic)?;
            self.authorize(&topic, TopicAction::Lookup, None).await?;
            let id = schema_id(&topic);
            let found = match request.schema_version.as_deref().filter(|bytes| !bytes.is_empty()) {
                Some(bytes) => {
                    let version = version_from_bytes(bytes).ok_or_else(|| BrokerError::InvalidArgument {
                        what: format!("schema version of {} bytes: expected 8", bytes.len()),
                    })?;
                    self.service.schemas.version(&id, version).await?
                }
                None => self.service.schemas.latest(&id).await?,
            };
            Ok::<_, BrokerError>((topic, found))
        }
        .await;
        let response = match answer {
            Ok((topic, Some(stored))) => pb::CommandGetSchemaResponse {
                request_id,
                schema: Some(stored.schema.to_wire(topic.local_name())),
                schema_version: Some(version_bytes(stored.version).into()),
                ..Default::default()
            },
            Ok((topic, None)) => pb::CommandGetSchemaResponse {
                request_id,
                error_code: Some(pb::ServerError::TopicNotFound as i32),
                error_message: Some(format!("schema not found for {}", schema_id(&topic))),
                ..Default::default()
            },
            Err(error) => pb::CommandGetSchemaResponse {
                request_id,
                error_code: Some(error.server_error() as i32),
                error_message: Some(error.to_string()),
                ..Default::default()
            },
        };
        let command = BaseCommand {
            command_type: Type::GetSchemaResponse as i32,
            get_schema_response: Some(response),
            ..Default::default()
        };
        self.send(command).await;
    }

    /// GET_OR_CREATE_SCHEMA: the version of the given schema, registered under the topic's
    /// rules if new (what AUTO_PRODUCE and multi-schema producers ask).
    pub(super) async fn on_get_or_create_schema(&self, request: pb::CommandGetOrCreateSchema) {
        let request_id = request.request_id;
        let answer = async {
            let topic = TopicName::parse(&request.topic)?;
            self.authorize(&topic, TopicAction::Produce, None).await?;
            let version = self.producer_schema(&topic, Some(&request.schema)).await?;
            Ok::<_, BrokerError>(version.unwrap_or_else(|| version_bytes(-1)))
        }
        .await;
        let response = match answer {
            Ok(version) => pb::CommandGetOrCreateSchemaResponse {
                request_id,
                schema_version: Some(version.into()),
                ..Default::default()
            },
            Err(error) => {
                info!(peer = %self.peer, topic = %request.topic, %error, "schema refused");
                pb::CommandGetOrCreateSchemaResponse {
                    request_id,
                    error_code: Some(error.server_error() as i32),
                    error_message: Some(error.to_string()),
                    ..Default::default()
                }
            }
        };
        let command = BaseCommand {
            command_type: Type::GetOrCreateSchemaResponse as i32,
            get_or_create_schema_response: Some(response),
            ..Default::default()
        };
        self.send(command).await;
    }
}
