//! The schema registry over REST, in pulsar-admin's paths and shapes
//! (`/admin/v2/schemas/{tenant}/{namespace}/{topic}/...`): the latest schema, one version,
//! every version, registering a schema (an admin may register while clients may not:
//! `isAllowAutoUpdateSchema` binds clients only), deleting, the version of a given schema, and
//! a compatibility test that registers nothing. Any broker answers: the registry is in the
//! metadata store.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{existing_namespace_topic, json_body, ApiError, AppState};
use crate::error::BrokerError;
use crate::schema::{schema_id, SchemaData, SchemaType, StoredVersion};

pub(super) fn routes() -> Router<AppState> {
    let path = |rest: &str| format!("/admin/v2/schemas/{{tenant}}/{{namespace}}/{{topic}}/{rest}");
    Router::new()
        .route(&path("schema"), get(latest).post(register).delete(delete))
        .route(&path("schema/{version}"), get(one_version))
        .route(&path("schemas"), get(all_versions))
        .route(&path("compatibility"), post(compatibility))
        .route(&path("version"), post(version_of))
}

/// pulsar-admin's `PostSchemaPayload`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    #[serde(rename = "type")]
    schema_type: String,
    #[serde(default)]
    schema: String,
    #[serde(default)]
    properties: BTreeMap<String, String>,
}

impl Payload {
    /// The schema the payload describes; a KEY_VALUE schema's text is `{"key": ..., "value":
    /// ...}` with each half's definition.
    fn into_schema(self) -> Result<SchemaData, BrokerError> {
        let schema_type = SchemaType::from_name(&self.schema_type).ok_or_else(|| BrokerError::InvalidSchema {
            what: format!("unknown schema type {:?}", self.schema_type),
        })?;
        let data = match schema_type {
            SchemaType::KeyValue => key_value_data(&self.schema)?,
            _ => self.schema.into_bytes(),
        };
        let schema = SchemaData { schema_type, data, properties: self.properties };
        schema.validate()?;
        Ok(schema)
    }
}

/// KeyValue definition bytes from the admin API's `{"key": ..., "value": ...}` text.
fn key_value_data(text: &str) -> Result<Vec<u8>, BrokerError> {
    let invalid = || BrokerError::InvalidSchema { what: "a KEY_VALUE schema is {\"key\": ..., \"value\": ...}".into() };
    let value: Value = serde_json::from_str(text).map_err(|_| invalid())?;
    let part = |name: &str| -> Result<Vec<u8>, BrokerError> {
        Ok(match value.get(name).ok_or_else(invalid)? {
            Value::String(text) => text.clone().into_bytes(),
            Value::Null => Vec::new(),
            other => other.to_string().into_bytes(),
        })
    };
    let mut data = Vec::new();
    for half in [part("key")?, part("value")?] {
        data.extend_from_slice(&(half.len() as i32).to_be_bytes());
        data.extend_from_slice(&half);
    }
    Ok(data)
}

/// pulsar-admin's `GetSchemaResponse`.
fn response(stored: &StoredVersion) -> Value {
    json!({
        "version": stored.version,
        "type": stored.schema.schema_type.name(),
        "timestamp": stored.timestamp_ms,
        "data": stored.schema.definition_text(),
        "properties": stored.schema.properties,
    })
}

async fn schema_of(service: &AppState, tenant: &str, ns: &str, topic: &str) -> Result<String, ApiError> {
    Ok(schema_id(&existing_namespace_topic(service, tenant, ns, topic).await?))
}

/// The schema id, the posted schema and the topic's strategy.
async fn posted(
    service: &AppState,
    tenant: &str,
    ns: &str,
    topic: &str,
    body: &str,
) -> Result<(String, SchemaData, crate::schema::Strategy), ApiError> {
    let name = existing_namespace_topic(service, tenant, ns, topic).await?;
    let schema = json_body::<Payload>(body, "a PostSchemaPayload object")?.into_schema()?;
    Ok((schema_id(&name), schema, service.schema_policy(&name).strategy))
}

fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "Schema not found".to_owned())
}

async fn latest(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id = schema_of(&service, &tenant, &ns, &topic).await?;
    let stored = service.schemas.latest(&id).await?.ok_or_else(not_found)?;
    Ok(Json(response(&stored)))
}

async fn one_version(
    State(service): State<AppState>,
    Path((tenant, ns, topic, version)): Path<(String, String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id = schema_of(&service, &tenant, &ns, &topic).await?;
    let version: i64 = version
        .parse()
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("schema version {version:?} is not a number")))?;
    let stored = service.schemas.version(&id, version).await?.ok_or_else(not_found)?;
    Ok(Json(response(&stored)))
}

async fn all_versions(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id = schema_of(&service, &tenant, &ns, &topic).await?;
    let versions: Vec<Value> = service.schemas.active(&id).await?.iter().map(response).collect();
    Ok(Json(json!({ "getSchemaResponses": versions })))
}

async fn register(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
    body: String,
) -> Result<Json<Value>, ApiError> {
    let (id, schema, strategy) = posted(&service, &tenant, &ns, &topic, &body).await?;
    let version = service.schemas.register(&id, &schema, strategy, "admin").await?;
    Ok(Json(json!({ "version": { "version": version } })))
}

async fn delete(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id = schema_of(&service, &tenant, &ns, &topic).await?;
    let version = service.schemas.delete(&id, "admin").await?.ok_or_else(not_found)?;
    Ok(Json(json!({ "version": version })))
}

async fn compatibility(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
    body: String,
) -> Result<Json<Value>, ApiError> {
    let (id, schema, strategy) = posted(&service, &tenant, &ns, &topic, &body).await?;
    let compatible = match service.schemas.check(&id, &schema, strategy).await {
        Ok(()) => true,
        Err(BrokerError::IncompatibleSchema { .. }) => false,
        Err(error) => return Err(error.into()),
    };
    Ok(Json(json!({ "compatibility": compatible, "schemaCompatibilityStrategy": strategy.name() })))
}

async fn version_of(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
    body: String,
) -> Result<Json<Value>, ApiError> {
    let (id, schema, _) = posted(&service, &tenant, &ns, &topic, &body).await?;
    let version = service.schemas.find(&id, &schema).await?.ok_or_else(not_found)?;
    Ok(Json(json!({ "version": version })))
}
