//! Schemas as clients send them (PRODUCER, SUBSCRIBE, GET_OR_CREATE_SCHEMA) and as the admin
//! API posts them, and the checks a definition passes before it is stored. A definition that
//! fails them is refused with a message naming what is wrong; nothing is stored.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use magnetar_proto::pulsar as pb;

use crate::error::BrokerError;

/// Largest schema definition accepted (Pulsar's clients send a few KiB; a KeyValue holds two).
pub const MAX_SCHEMA_BYTES: usize = 1024 * 1024;
/// Most properties one schema may carry.
pub const MAX_PROPERTIES: usize = 256;

/// Pulsar's schema types, with the numbers of the protocol's `Schema.Type` and the names of
/// the admin API (`SchemaType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemaType {
    /// No schema: raw bytes (the admin API's `BYTES`, the protocol's `NONE`).
    None,
    String,
    Json,
    Protobuf,
    Avro,
    Boolean,
    Int8,
    Int16,
    Int32,
    Int64,
    Float,
    Double,
    Date,
    Time,
    Timestamp,
    KeyValue,
    Instant,
    LocalDate,
    LocalTime,
    LocalDateTime,
    ProtobufNative,
    /// A consumer taking whatever schema the topic has.
    AutoConsume,
}

const TYPES: [(SchemaType, i32, &str); 22] = [
    (SchemaType::None, 0, "BYTES"),
    (SchemaType::String, 1, "STRING"),
    (SchemaType::Json, 2, "JSON"),
    (SchemaType::Protobuf, 3, "PROTOBUF"),
    (SchemaType::Avro, 4, "AVRO"),
    (SchemaType::Boolean, 5, "BOOLEAN"),
    (SchemaType::Int8, 6, "INT8"),
    (SchemaType::Int16, 7, "INT16"),
    (SchemaType::Int32, 8, "INT32"),
    (SchemaType::Int64, 9, "INT64"),
    (SchemaType::Float, 10, "FLOAT"),
    (SchemaType::Double, 11, "DOUBLE"),
    (SchemaType::Date, 12, "DATE"),
    (SchemaType::Time, 13, "TIME"),
    (SchemaType::Timestamp, 14, "TIMESTAMP"),
    (SchemaType::KeyValue, 15, "KEY_VALUE"),
    (SchemaType::Instant, 16, "INSTANT"),
    (SchemaType::LocalDate, 17, "LOCAL_DATE"),
    (SchemaType::LocalTime, 18, "LOCAL_TIME"),
    (SchemaType::LocalDateTime, 19, "LOCAL_DATE_TIME"),
    (SchemaType::ProtobufNative, 20, "PROTOBUF_NATIVE"),
    (SchemaType::AutoConsume, 21, "AUTO_CONSUME"),
];

impl SchemaType {
    pub fn from_number(number: i32) -> Option<SchemaType> {
        TYPES.iter().find(|(_, n, _)| *n == number).map(|(t, _, _)| *t)
    }

    /// From the admin API's name (`AVRO`, `KEY_VALUE`, `BYTES` or `NONE`, ...).
    pub fn from_name(name: &str) -> Option<SchemaType> {
        if name.eq_ignore_ascii_case("NONE") {
            return Some(SchemaType::None);
        }
        TYPES.iter().find(|(_, _, n)| n.eq_ignore_ascii_case(name)).map(|(t, _, _)| *t)
    }

    pub fn number(self) -> i32 {
        TYPES.iter().find(|(t, _, _)| *t == self).map_or(0, |(_, n, _)| *n)
    }

    pub fn name(self) -> &'static str {
        TYPES.iter().find(|(t, _, _)| *t == self).map_or("BYTES", |(_, _, n)| n)
    }

    /// Types whose definition is empty: primitives.
    pub fn is_primitive(self) -> bool {
        !matches!(
            self,
            SchemaType::Json
                | SchemaType::Protobuf
                | SchemaType::Avro
                | SchemaType::KeyValue
                | SchemaType::ProtobufNative
                | SchemaType::AutoConsume
        )
    }

    /// Types whose definition is an Avro schema (Pulsar's JSON and PROTOBUF schemas are
    /// described in Avro too).
    pub fn is_avro_based(self) -> bool {
        matches!(self, SchemaType::Avro | SchemaType::Json | SchemaType::Protobuf)
    }
}

impl fmt::Display for SchemaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A schema: its type, definition bytes and properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaData {
    pub schema_type: SchemaType,
    pub data: Vec<u8>,
    pub properties: BTreeMap<String, String>,
}

fn invalid(what: impl Into<String>) -> BrokerError {
    BrokerError::InvalidSchema { what: what.into() }
}

impl SchemaData {
    /// The schema a PRODUCER, SUBSCRIBE or GET_OR_CREATE_SCHEMA carries; `None` for none, a
    /// `NONE` (bytes) schema, or AUTO_CONSUME: those ask nothing of the registry.
    pub fn from_wire(schema: Option<&pb::Schema>) -> Result<Option<SchemaData>, BrokerError> {
        let Some(schema) = schema else { return Ok(None) };
        let schema_type = SchemaType::from_number(schema.schema_type)
            .ok_or_else(|| invalid(format!("unknown schema type {}", schema.schema_type)))?;
        if matches!(schema_type, SchemaType::None | SchemaType::AutoConsume) {
            return Ok(None);
        }
        let properties = schema.properties.iter().map(|kv| (kv.key.clone(), kv.value.clone())).collect();
        let data = SchemaData { schema_type, data: schema.schema_data.to_vec(), properties };
        data.validate()?;
        Ok(Some(data))
    }

    /// The protocol's `Schema`, named `name` (Pulsar names it after the topic).
    pub fn to_wire(&self, name: &str) -> pb::Schema {
        pb::Schema {
            name: name.to_owned(),
            schema_data: self.data.clone().into(),
            schema_type: self.schema_type.number(),
            properties: self
                .properties
                .iter()
                .map(|(key, value)| pb::KeyValue { key: key.clone(), value: value.clone() })
                .collect(),
        }
    }

    /// Checks the definition for its type; the message says what is wrong.
    pub fn validate(&self) -> Result<(), BrokerError> {
        if self.data.len() > MAX_SCHEMA_BYTES {
            return Err(invalid(format!("schema definition of {} bytes exceeds {MAX_SCHEMA_BYTES}", self.data.len())));
        }
        if self.properties.len() > MAX_PROPERTIES {
            return Err(invalid(format!("more than {MAX_PROPERTIES} schema properties")));
        }
        validate_definition(self.schema_type, &self.data)?;
        if self.schema_type == SchemaType::KeyValue {
            let (key, value) = self.key_value_parts()?;
            key.validate().map_err(|e| invalid(format!("key schema: {}", reason(&e))))?;
            value.validate().map_err(|e| invalid(format!("value schema: {}", reason(&e))))?;
        }
        Ok(())
    }

    /// The key and value schemas of a KEY_VALUE schema: the data is the key's definition and
    /// the value's, each after its 4-byte big-endian length; their types and properties are in
    /// the `key.schema.*` and `value.schema.*` properties.
    pub fn key_value_parts(&self) -> Result<(SchemaData, SchemaData), BrokerError> {
        let (key_data, value_data) = split_key_value(&self.data)?;
        let part = |prefix: &str, data: Vec<u8>| -> Result<SchemaData, BrokerError> {
            let type_name = self.properties.get(&format!("{prefix}.schema.type")).map_or("BYTES", String::as_str);
            let schema_type = SchemaType::from_name(type_name)
                .ok_or_else(|| invalid(format!("{prefix}.schema.type {type_name:?} is not a schema type")))?;
            let properties = match self.properties.get(&format!("{prefix}.schema.properties")) {
                Some(text) if !text.trim().is_empty() => serde_json::from_str(text)
                    .map_err(|_| invalid(format!("{prefix}.schema.properties is not a JSON object of strings")))?,
                _ => BTreeMap::new(),
            };
            Ok(SchemaData { schema_type, data, properties })
        };
        Ok((part("key", key_data)?, part("value", value_data)?))
    }

    /// The definition as the admin API shows it: the text for Avro-based and protobuf types,
    /// `{"key": ..., "value": ...}` for KeyValue, empty for primitives.
    pub fn definition_text(&self) -> String {
        if self.schema_type == SchemaType::KeyValue {
            if let Ok((key, value)) = self.key_value_parts() {
                let text = |part: &SchemaData| {
                    serde_json::from_str::<serde_json::Value>(&part.definition_text())
                        .unwrap_or_else(|_| serde_json::Value::String(part.definition_text()))
                };
                return serde_json::json!({"key": text(&key), "value": text(&value)}).to_string();
            }
        }
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

fn reason(error: &BrokerError) -> String {
    match error {
        BrokerError::InvalidSchema { what } => what.clone(),
        other => other.to_string(),
    }
}

/// Splits KeyValue definition bytes into the key's and the value's.
pub fn split_key_value(data: &[u8]) -> Result<(Vec<u8>, Vec<u8>), BrokerError> {
    let mut rest = data;
    let mut take = |which: &str| -> Result<Vec<u8>, BrokerError> {
        let too_short = || invalid(format!("KeyValue schema data ends before the {which} schema's length"));
        let length: [u8; 4] = rest.get(..4).ok_or_else(too_short)?.try_into().map_err(|_| too_short())?;
        let length = i32::from_be_bytes(length);
        rest = &rest[4..];
        // Pulsar writes -1 for a missing part.
        let length = usize::try_from(length.max(0)).unwrap_or(0);
        let part = rest.get(..length).ok_or_else(|| {
            invalid(format!("KeyValue schema data: the {which} schema's length {length} runs past the end"))
        })?;
        rest = &rest[length..];
        Ok(part.to_vec())
    };
    if data.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let key = take("key")?;
    let value = take("value")?;
    Ok((key, value))
}

/// The checks of one type's definition bytes.
fn validate_definition(schema_type: SchemaType, data: &[u8]) -> Result<(), BrokerError> {
    let text =
        || std::str::from_utf8(data).map_err(|_| invalid(format!("{schema_type} schema definition is not UTF-8 text")));
    match schema_type {
        SchemaType::Avro => {
            avro_schema(text()?).map_err(|error| invalid(format!("AVRO schema definition: {error}")))?;
        }
        SchemaType::Json | SchemaType::Protobuf => {
            // An Avro definition, as Pulsar's clients send; a JSON Schema document (Pulsar's
            // oldest JSON schemas) is kept and compared as text.
            let text = text()?;
            if avro_schema(text).is_err() {
                let value: serde_json::Value = serde_json::from_str(text)
                    .map_err(|_| invalid(format!("{schema_type} schema definition is neither Avro nor JSON")))?;
                if !value.is_object() {
                    return Err(invalid(format!("{schema_type} schema definition is not a JSON object")));
                }
            }
        }
        SchemaType::ProtobufNative => {
            protobuf_native_root(text()?)?;
        }
        SchemaType::KeyValue => {
            split_key_value(data)?;
        }
        SchemaType::AutoConsume => return Err(invalid("AUTO_CONSUME is not a schema a topic can have")),
        primitive => {
            if !data.is_empty() {
                return Err(invalid(format!(
                    "a {primitive} schema has no definition, but {} bytes were given",
                    data.len()
                )));
            }
        }
    }
    Ok(())
}

/// Parses an Avro schema definition.
pub fn avro_schema(text: &str) -> Result<apache_avro::Schema, apache_avro::Error> {
    apache_avro::Schema::parse_str(text)
}

/// The root message type of a PROTOBUF_NATIVE definition: Pulsar's JSON with
/// `fileDescriptorSet` (base64), `rootMessageTypeName` and `rootFileDescriptorName`.
pub fn protobuf_native_root(text: &str) -> Result<String, BrokerError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| invalid("PROTOBUF_NATIVE schema definition is not JSON"))?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(serde_json::Value::as_str)
            .filter(|text| !text.is_empty())
            .ok_or_else(|| invalid(format!("PROTOBUF_NATIVE schema definition has no {name}")))
    };
    let descriptors = field("fileDescriptorSet")?;
    base64::engine::general_purpose::STANDARD
        .decode(descriptors)
        .map_err(|_| invalid("PROTOBUF_NATIVE fileDescriptorSet is not base64"))?;
    field("rootFileDescriptorName")?;
    Ok(field("rootMessageTypeName")?.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = r#"{"type":"record","name":"User","fields":[{"name":"name","type":"string"}]}"#;

    fn schema(schema_type: SchemaType, data: &[u8]) -> SchemaData {
        SchemaData { schema_type, data: data.to_vec(), properties: BTreeMap::new() }
    }

    #[test]
    fn types_have_pulsar_numbers_and_names() {
        assert_eq!(SchemaType::from_number(4), Some(SchemaType::Avro));
        assert_eq!(SchemaType::from_number(20), Some(SchemaType::ProtobufNative));
        assert_eq!(SchemaType::from_number(99), None);
        assert_eq!(SchemaType::from_name("key_value"), Some(SchemaType::KeyValue));
        assert_eq!(SchemaType::from_name("NONE"), Some(SchemaType::None));
        assert_eq!(SchemaType::None.name(), "BYTES");
        for (schema_type, number, name) in TYPES {
            assert_eq!(schema_type.number(), number);
            assert_eq!(SchemaType::from_name(name), Some(schema_type));
        }
    }

    #[test]
    fn definitions_are_checked_by_type() {
        assert!(schema(SchemaType::Avro, USER.as_bytes()).validate().is_ok());
        let error = schema(SchemaType::Avro, b"{\"type\":\"record\"}").validate().unwrap_err().to_string();
        assert!(error.contains("AVRO schema definition"), "{error}");
        assert!(schema(SchemaType::Json, USER.as_bytes()).validate().is_ok());
        assert!(schema(SchemaType::Json, br#"{"$schema":"http://json-schema.org/draft-04/schema#"}"#)
            .validate()
            .is_ok());
        assert!(schema(SchemaType::Json, b"[1,2]").validate().is_err());
        assert!(schema(SchemaType::String, b"").validate().is_ok());
        assert!(schema(SchemaType::Int32, b"x").validate().unwrap_err().to_string().contains("INT32"));
        assert!(schema(SchemaType::Avro, &[0xff, 0xfe]).validate().unwrap_err().to_string().contains("UTF-8"));
        let native = r#"{"fileDescriptorSet":"AAEC","rootMessageTypeName":"a.B","rootFileDescriptorName":"b.proto"}"#;
        assert!(schema(SchemaType::ProtobufNative, native.as_bytes()).validate().is_ok());
        assert!(schema(SchemaType::ProtobufNative, b"{}").validate().is_err());
        let huge = vec![b' '; MAX_SCHEMA_BYTES + 1];
        assert!(schema(SchemaType::Avro, &huge).validate().unwrap_err().to_string().contains("exceeds"));
    }

    fn key_value(key: (&str, &[u8]), value: (&str, &[u8])) -> SchemaData {
        let mut data = Vec::new();
        for part in [key.1, value.1] {
            data.extend_from_slice(&(part.len() as i32).to_be_bytes());
            data.extend_from_slice(part);
        }
        let properties = BTreeMap::from([
            ("key.schema.type".to_owned(), key.0.to_owned()),
            ("value.schema.type".to_owned(), value.0.to_owned()),
            ("kv.encoding.type".to_owned(), "INLINE".to_owned()),
        ]);
        SchemaData { schema_type: SchemaType::KeyValue, data, properties }
    }

    #[test]
    fn key_value_parts_are_split_and_each_checked() {
        let kv = key_value(("STRING", b""), ("AVRO", USER.as_bytes()));
        kv.validate().expect("valid");
        let (key, value) = kv.key_value_parts().expect("parts");
        assert_eq!(key.schema_type, SchemaType::String);
        assert_eq!(value.schema_type, SchemaType::Avro);
        assert!(kv.definition_text().contains("\"value\":{"));
        let bad = key_value(("STRING", b""), ("AVRO", b"{}"));
        assert!(bad.validate().unwrap_err().to_string().contains("value schema"));
        let truncated = SchemaData { data: vec![0, 0, 0, 9, 1], ..kv.clone() };
        assert!(truncated.validate().unwrap_err().to_string().contains("runs past the end"));
        let unknown = key_value(("NOPE", b""), ("STRING", b""));
        assert!(unknown.validate().unwrap_err().to_string().contains("NOPE"));
    }

    proptest::proptest! {
        #[test]
        fn random_definitions_never_panic(schema_type in 0i32..25, data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let wire = pb::Schema { name: "t".into(), schema_data: data.into(), schema_type, properties: Vec::new() };
            let _ = SchemaData::from_wire(Some(&wire));
        }
    }
}
