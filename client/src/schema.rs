//! Typed messages over Pulsar schemas.
//!
//! A [`Schema`] says how values become payloads and back, and what the broker's registry
//! stores for the topic ([`SchemaInfo`]: type, definition, properties, as Pulsar's clients send
//! them). [`ProducerBuilder::with_schema`](crate::ProducerBuilder::with_schema) sends it in
//! PRODUCER (the broker registers it or refuses it with IncompatibleSchema) and stamps the
//! version it got on every message; [`ConsumerBuilder::with_schema`](crate::ConsumerBuilder::with_schema)
//! sends it in SUBSCRIBE and decodes each message with the schema version it was written with,
//! fetched by GET_SCHEMA when it is not the consumer's own (Avro resolves old writers' data
//! into the reader's shape).
//!
//! Schemas: [`StringSchema`], [`BytesSchema`], the primitives ([`Int8Schema`] ...
//! [`DoubleSchema`], [`BoolSchema`], [`TimestampSchema`]), [`JsonSchema`] (serde; the
//! Avro-style definition Pulsar's clients send), [`AvroSchema`] (apache-avro), [`ProtobufSchema`]
//! (prost messages as PROTOBUF_NATIVE, with their descriptors), [`KeyValueSchema`] (inline or
//! separated), and [`AutoConsumeSchema`], which reads any topic as a dynamic
//! [`serde_json::Value`] by the schema each message was written with.
//!
//! ```no_run
//! # async fn run() -> Result<(), magnetar_client::ClientError> {
//! use magnetar_client::schema::JsonSchema;
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Order { id: i64, item: String }
//! let definition = r#"{"type":"record","name":"Order","fields":[
//!     {"name":"id","type":"long"},{"name":"item","type":"string"}]}"#;
//! let client = magnetar_client::Client::connect("pulsar://localhost:6650").await?;
//! let mut producer = client.producer("orders").with_schema(JsonSchema::<Order>::new(definition)?).create().await?;
//! producer.send(&Order { id: 1, item: "book".into() }).await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use base64::Engine;
use magnetar_proto::pulsar::{self as pb, base_command::Type, BaseCommand};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::consumer::{Consumer, ConsumerBuilder};
use crate::error::ClientError;
use crate::message::{Message, MessageId};
use crate::producer::{Producer, ProducerBuilder, ProducerMessage};
use crate::topic::TopicName;
use crate::Client;

pub use magnetar_proto::pulsar::schema::Type as SchemaType;

/// What the registry stores for a schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaInfo {
    pub name: String,
    pub schema_type: SchemaType,
    pub data: Vec<u8>,
    pub properties: BTreeMap<String, String>,
}

impl SchemaInfo {
    fn new(schema_type: SchemaType, data: Vec<u8>) -> Self {
        SchemaInfo { name: String::new(), schema_type, data, properties: BTreeMap::new() }
    }

    /// The protocol's schema; `None` for bytes, which Pulsar's clients send as no schema.
    pub(crate) fn to_wire(&self) -> Option<pb::Schema> {
        (self.schema_type != SchemaType::None).then(|| pb::Schema {
            name: self.name.clone(),
            schema_data: self.data.clone(),
            schema_type: self.schema_type as i32,
            properties: self
                .properties
                .iter()
                .map(|(key, value)| pb::KeyValue { key: key.clone(), value: value.clone() })
                .collect(),
        })
    }

    fn from_wire(schema: &pb::Schema) -> Self {
        SchemaInfo {
            name: schema.name.clone(),
            schema_type: SchemaType::try_from(schema.schema_type).unwrap_or(SchemaType::None),
            data: schema.schema_data.clone(),
            properties: schema.properties.iter().map(|kv| (kv.key.clone(), kv.value.clone())).collect(),
        }
    }
}

fn schema_error(reason: impl Into<String>) -> ClientError {
    ClientError::Schema { reason: reason.into() }
}

/// How values of one type are written and read, and what the registry keeps for them.
pub trait Schema: Send + Sync + 'static {
    type Value: Send;

    fn info(&self) -> SchemaInfo;

    fn encode(&self, value: &Self::Value) -> Result<Vec<u8>, ClientError>;

    /// Decodes a payload written with this schema.
    fn decode(&self, payload: &[u8]) -> Result<Self::Value, ClientError>;

    /// Decodes a payload written with `writer` (another version of the topic's schema). By
    /// default the definitions must be the same; Avro-based schemas resolve.
    fn decode_from(&self, payload: &[u8], writer: &SchemaInfo) -> Result<Self::Value, ClientError> {
        let own = self.info();
        if writer.schema_type != own.schema_type {
            return Err(schema_error(format!(
                "message written with a {:?} schema, read with {:?}",
                writer.schema_type, own.schema_type
            )));
        }
        self.decode(payload)
    }

    /// The message for `value` (a KeyValue schema with SEPARATED encoding puts the key in
    /// the message key).
    fn message(&self, value: &Self::Value) -> Result<ProducerMessage, ClientError> {
        Ok(ProducerMessage::new(self.encode(value)?))
    }

    /// The value of a received message, written with `writer` (`None`: this schema).
    fn value_of(&self, message: &Message, writer: Option<&SchemaInfo>) -> Result<Self::Value, ClientError> {
        match writer {
            Some(writer) => self.decode_from(&message.payload, writer),
            None => self.decode(&message.payload),
        }
    }
}

/// UTF-8 text (STRING).
#[derive(Debug, Clone, Copy, Default)]
pub struct StringSchema;

impl Schema for StringSchema {
    type Value = String;

    fn info(&self) -> SchemaInfo {
        SchemaInfo::new(SchemaType::String, Vec::new())
    }

    fn encode(&self, value: &String) -> Result<Vec<u8>, ClientError> {
        Ok(value.as_bytes().to_vec())
    }

    fn decode(&self, payload: &[u8]) -> Result<String, ClientError> {
        String::from_utf8(payload.to_vec()).map_err(|_| schema_error("a STRING message is not UTF-8"))
    }
}

/// Raw bytes: no schema on the wire, as Pulsar's BYTES.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesSchema;

impl Schema for BytesSchema {
    type Value = Vec<u8>;

    fn info(&self) -> SchemaInfo {
        SchemaInfo::new(SchemaType::None, Vec::new())
    }

    fn encode(&self, value: &Vec<u8>) -> Result<Vec<u8>, ClientError> {
        Ok(value.clone())
    }

    fn decode(&self, payload: &[u8]) -> Result<Vec<u8>, ClientError> {
        Ok(payload.to_vec())
    }

    fn decode_from(&self, payload: &[u8], _writer: &SchemaInfo) -> Result<Vec<u8>, ClientError> {
        Ok(payload.to_vec())
    }
}

/// Big-endian fixed-size numbers, as Pulsar's primitive schemas write them.
macro_rules! primitive_schema {
    ($name:ident, $value:ty, $wire:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $name;

        impl Schema for $name {
            type Value = $value;

            fn info(&self) -> SchemaInfo {
                SchemaInfo::new($wire, Vec::new())
            }

            fn encode(&self, value: &$value) -> Result<Vec<u8>, ClientError> {
                Ok(value.to_be_bytes().to_vec())
            }

            fn decode(&self, payload: &[u8]) -> Result<$value, ClientError> {
                let bytes = payload
                    .try_into()
                    .map_err(|_| schema_error(format!("a {:?} message of {} bytes", $wire, payload.len())))?;
                Ok(<$value>::from_be_bytes(bytes))
            }
        }
    };
}

primitive_schema!(Int8Schema, i8, SchemaType::Int8, "INT8: one byte.");
primitive_schema!(Int16Schema, i16, SchemaType::Int16, "INT16: two bytes, big-endian.");
primitive_schema!(Int32Schema, i32, SchemaType::Int32, "INT32: four bytes, big-endian.");
primitive_schema!(Int64Schema, i64, SchemaType::Int64, "INT64: eight bytes, big-endian.");
primitive_schema!(FloatSchema, f32, SchemaType::Float, "FLOAT: IEEE 754, big-endian.");
primitive_schema!(DoubleSchema, f64, SchemaType::Double, "DOUBLE: IEEE 754, big-endian.");
primitive_schema!(TimestampSchema, i64, SchemaType::Timestamp, "TIMESTAMP: milliseconds since the epoch, 8 bytes.");

/// BOOLEAN: one byte, 0 or 1.
#[derive(Debug, Clone, Copy, Default)]
pub struct BoolSchema;

impl Schema for BoolSchema {
    type Value = bool;

    fn info(&self) -> SchemaInfo {
        SchemaInfo::new(SchemaType::Bool, Vec::new())
    }

    fn encode(&self, value: &bool) -> Result<Vec<u8>, ClientError> {
        Ok(vec![u8::from(*value)])
    }

    fn decode(&self, payload: &[u8]) -> Result<bool, ClientError> {
        match payload {
            [byte] => Ok(*byte != 0),
            _ => Err(schema_error(format!("a BOOLEAN message of {} bytes", payload.len()))),
        }
    }
}

fn parse_avro(definition: &str) -> Result<apache_avro::Schema, ClientError> {
    apache_avro::Schema::parse_str(definition).map_err(|error| schema_error(format!("Avro definition: {error}")))
}

/// JSON payloads (serde) described by an Avro record definition, as Pulsar's JSON schemas
/// are (Java's `Schema.JSON`, Python's `JsonSchema`).
pub struct JsonSchema<T> {
    definition: String,
    _value: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for JsonSchema<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonSchema").field("definition", &self.definition).finish()
    }
}

impl<T> Clone for JsonSchema<T> {
    fn clone(&self) -> Self {
        JsonSchema { definition: self.definition.clone(), _value: PhantomData }
    }
}

impl<T> JsonSchema<T> {
    /// From an Avro record definition (checked to parse).
    pub fn new(definition: &str) -> Result<Self, ClientError> {
        parse_avro(definition)?;
        Ok(JsonSchema { definition: definition.to_owned(), _value: PhantomData })
    }

    /// From a type that describes itself in Avro (`#[derive(apache_avro::AvroSchema)]`).
    pub fn of() -> Self
    where
        T: apache_avro::AvroSchema,
    {
        JsonSchema { definition: T::get_schema().canonical_form(), _value: PhantomData }
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Schema for JsonSchema<T> {
    type Value = T;

    fn info(&self) -> SchemaInfo {
        let mut info = SchemaInfo::new(SchemaType::Json, self.definition.clone().into_bytes());
        // What Java's JSON schemas carry.
        info.properties.insert("__alwaysAllowNull".into(), "true".into());
        info.properties.insert("__jsr310ConversionEnabled".into(), "false".into());
        info
    }

    fn encode(&self, value: &T) -> Result<Vec<u8>, ClientError> {
        serde_json::to_vec(value).map_err(|source| ClientError::Json { source })
    }

    fn decode(&self, payload: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(payload).map_err(|source| ClientError::Json { source })
    }

    /// JSON fields are read by name: any JSON version decodes if the fields `T` needs are there.
    fn decode_from(&self, payload: &[u8], writer: &SchemaInfo) -> Result<T, ClientError> {
        if writer.schema_type != SchemaType::Json {
            return Err(schema_error(format!("message written with a {:?} schema, read as JSON", writer.schema_type)));
        }
        self.decode(payload)
    }
}

/// Avro binary payloads (apache-avro with serde), resolving data written with an older (or
/// newer) version of the definition into this one.
pub struct AvroSchema<T> {
    definition: String,
    schema: apache_avro::Schema,
    _value: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for AvroSchema<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AvroSchema").field("definition", &self.definition).finish()
    }
}

impl<T> Clone for AvroSchema<T> {
    fn clone(&self) -> Self {
        AvroSchema { definition: self.definition.clone(), schema: self.schema.clone(), _value: PhantomData }
    }
}

impl<T> AvroSchema<T> {
    pub fn new(definition: &str) -> Result<Self, ClientError> {
        Ok(AvroSchema { definition: definition.to_owned(), schema: parse_avro(definition)?, _value: PhantomData })
    }

    /// From a type that describes itself in Avro (`#[derive(apache_avro::AvroSchema)]`).
    pub fn of() -> Self
    where
        T: apache_avro::AvroSchema,
    {
        let schema = T::get_schema();
        AvroSchema { definition: schema.canonical_form(), schema, _value: PhantomData }
    }
}

fn avro_error(error: apache_avro::Error) -> ClientError {
    schema_error(format!("Avro: {error}"))
}

/// One Avro datum written with `writer`, resolved into `reader` when given.
fn read_datum(
    writer: &apache_avro::Schema,
    reader: Option<&apache_avro::Schema>,
    payload: &[u8],
) -> Result<apache_avro::types::Value, ClientError> {
    apache_avro::reader::datum::GenericDatumReader::builder(writer)
        .maybe_reader_schema(reader)
        .build()
        .and_then(|datum| datum.read_value(&mut &payload[..]))
        .map_err(avro_error)
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Schema for AvroSchema<T> {
    type Value = T;

    fn info(&self) -> SchemaInfo {
        SchemaInfo::new(SchemaType::Avro, self.definition.clone().into_bytes())
    }

    fn encode(&self, value: &T) -> Result<Vec<u8>, ClientError> {
        // serde's unsigned integers (serde_json's numbers among them) have no Avro form:
        // what does not resolve directly is tried through its JSON form.
        let value = match apache_avro::to_value(value).and_then(|avro| avro.resolve(&self.schema)) {
            Ok(resolved) => resolved,
            Err(direct) => {
                let json = serde_json::to_value(value).map_err(|source| ClientError::Json { source })?;
                apache_avro::types::Value::try_from(json)
                    .and_then(|avro| avro.resolve(&self.schema))
                    .map_err(|_| avro_error(direct))?
            }
        };
        apache_avro::writer::datum::GenericDatumWriter::builder(&self.schema)
            .build()
            .and_then(|datum| datum.write_value_to_vec(value))
            .map_err(avro_error)
    }

    fn decode(&self, payload: &[u8]) -> Result<T, ClientError> {
        let value = read_datum(&self.schema, None, payload)?;
        apache_avro::from_value(&value).map_err(avro_error)
    }

    fn decode_from(&self, payload: &[u8], writer: &SchemaInfo) -> Result<T, ClientError> {
        if writer.schema_type != SchemaType::Avro {
            return Err(schema_error(format!("message written with a {:?} schema, read as AVRO", writer.schema_type)));
        }
        let writer = parse_avro(&String::from_utf8_lossy(&writer.data))?;
        let value = read_datum(&writer, Some(&self.schema), payload)?;
        apache_avro::from_value(&value).map_err(avro_error)
    }
}

/// prost messages as PROTOBUF_NATIVE: the definition is the message's file descriptors (an
/// encoded `FileDescriptorSet`, as `prost-build`'s `file_descriptor_set_path` writes it) and
/// its full name, in the JSON Pulsar's clients send.
pub struct ProtobufSchema<T> {
    descriptors: Vec<u8>,
    root_message: String,
    root_file: String,
    _value: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for ProtobufSchema<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProtobufSchema").field("root_message", &self.root_message).finish()
    }
}

impl<T> ProtobufSchema<T> {
    /// `descriptors`: the encoded `FileDescriptorSet` holding `root_message` (e.g.
    /// `shop.Order`), defined in the file `root_file` (e.g. `shop.proto`).
    pub fn new(descriptors: Vec<u8>, root_message: &str, root_file: &str) -> Self {
        ProtobufSchema {
            descriptors,
            root_message: root_message.into(),
            root_file: root_file.into(),
            _value: PhantomData,
        }
    }
}

impl<T: prost::Message + Default + Send + 'static> Schema for ProtobufSchema<T> {
    type Value = T;

    fn info(&self) -> SchemaInfo {
        let definition = serde_json::json!({
            "fileDescriptorSet": base64::engine::general_purpose::STANDARD.encode(&self.descriptors),
            "rootMessageTypeName": self.root_message,
            "rootFileDescriptorName": self.root_file,
        });
        SchemaInfo::new(SchemaType::ProtobufNative, definition.to_string().into_bytes())
    }

    fn encode(&self, value: &T) -> Result<Vec<u8>, ClientError> {
        Ok(value.encode_to_vec())
    }

    fn decode(&self, payload: &[u8]) -> Result<T, ClientError> {
        T::decode(payload).map_err(|error| schema_error(format!("protobuf: {error}")))
    }
}

/// How a KeyValue message carries its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyValueEncoding {
    /// Key and value in the payload, each after its 4-byte big-endian length.
    #[default]
    Inline,
    /// The key in the message key (base64 of its bytes), the value as the payload; keys then
    /// route and compact as message keys do.
    Separated,
}

/// A key and a value, each with its own schema (Pulsar's `KeyValue` schema).
#[derive(Debug, Clone)]
pub struct KeyValueSchema<K, V> {
    key: K,
    value: V,
    encoding: KeyValueEncoding,
}

impl<K: Schema, V: Schema> KeyValueSchema<K, V> {
    pub fn new(key: K, value: V, encoding: KeyValueEncoding) -> Self {
        KeyValueSchema { key, value, encoding }
    }
}

/// `len(a) a len(b) b`, lengths as 4-byte big-endian.
fn join_parts(first: &[u8], second: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + first.len() + second.len());
    for part in [first, second] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

fn split_parts(bytes: &[u8]) -> Result<(&[u8], &[u8]), ClientError> {
    let mut rest = bytes;
    let mut take = || -> Result<&[u8], ClientError> {
        let length: [u8; 4] =
            rest.get(..4).and_then(|b| b.try_into().ok()).ok_or_else(|| schema_error("KeyValue data ends early"))?;
        let length = i32::from_be_bytes(length).max(0) as usize;
        let part = rest.get(4..4 + length).ok_or_else(|| schema_error("KeyValue part runs past the end"))?;
        rest = &rest[4 + length..];
        Ok(part)
    };
    let first = take()?;
    let second = take()?;
    Ok((first, second))
}

fn type_name(schema_type: SchemaType) -> &'static str {
    match schema_type {
        SchemaType::None => "BYTES",
        SchemaType::Bool => "BOOLEAN",
        other => other.as_str_name(),
    }
}

fn type_from_name(name: &str) -> SchemaType {
    match name {
        "BYTES" | "NONE" => SchemaType::None,
        "BOOLEAN" => SchemaType::Bool,
        other => SchemaType::from_str_name(other).unwrap_or(SchemaType::None),
    }
}

impl<K: Schema, V: Schema> Schema for KeyValueSchema<K, V> {
    type Value = (K::Value, V::Value);

    fn info(&self) -> SchemaInfo {
        let (key, value) = (self.key.info(), self.value.info());
        let mut info = SchemaInfo::new(SchemaType::KeyValue, join_parts(&key.data, &value.data));
        for (prefix, part) in [("key", &key), ("value", &value)] {
            info.properties.insert(format!("{prefix}.schema.name"), part.name.clone());
            info.properties.insert(format!("{prefix}.schema.type"), type_name(part.schema_type).into());
            let properties = serde_json::to_string(&part.properties).unwrap_or_else(|_| "{}".into());
            info.properties.insert(format!("{prefix}.schema.properties"), properties);
        }
        let encoding = match self.encoding {
            KeyValueEncoding::Inline => "INLINE",
            KeyValueEncoding::Separated => "SEPARATED",
        };
        info.properties.insert("kv.encoding.type".into(), encoding.into());
        info
    }

    fn encode(&self, (key, value): &Self::Value) -> Result<Vec<u8>, ClientError> {
        Ok(join_parts(&self.key.encode(key)?, &self.value.encode(value)?))
    }

    fn decode(&self, payload: &[u8]) -> Result<Self::Value, ClientError> {
        let (key, value) = split_parts(payload)?;
        Ok((self.key.decode(key)?, self.value.decode(value)?))
    }

    fn message(&self, value: &Self::Value) -> Result<ProducerMessage, ClientError> {
        match self.encoding {
            KeyValueEncoding::Inline => Ok(ProducerMessage::new(self.encode(value)?)),
            KeyValueEncoding::Separated => {
                Ok(ProducerMessage::new(self.value.encode(&value.1)?).key_bytes(&self.key.encode(&value.0)?))
            }
        }
    }

    fn value_of(&self, message: &Message, writer: Option<&SchemaInfo>) -> Result<Self::Value, ClientError> {
        if let Some(writer) = writer.filter(|writer| writer.schema_type != SchemaType::KeyValue) {
            return Err(schema_error(format!(
                "message written with a {:?} schema, read as KEY_VALUE",
                writer.schema_type
            )));
        }
        match self.encoding {
            KeyValueEncoding::Inline => self.decode(&message.payload),
            KeyValueEncoding::Separated => {
                let key =
                    message.key.as_deref().ok_or_else(|| schema_error("a SEPARATED KeyValue message has no key"))?;
                let key = if message.key_is_base64 {
                    base64::engine::general_purpose::STANDARD
                        .decode(key)
                        .map_err(|_| schema_error("the message key is not base64"))?
                } else {
                    key.as_bytes().to_vec()
                };
                Ok((self.key.decode(&key)?, self.value.decode(&message.payload)?))
            }
        }
    }
}

/// Reads any topic: each message decoded by the schema it was written with into a
/// [`serde_json::Value`] (AVRO and JSON records become objects, KeyValue `{"key", "value"}`,
/// primitives numbers, strings and booleans, bytes an array of numbers).
#[derive(Debug, Clone, Copy, Default)]
pub struct AutoConsumeSchema;

fn dynamic(payload: &[u8], writer: &SchemaInfo, key: Option<&[u8]>) -> Result<serde_json::Value, ClientError> {
    use serde_json::Value;
    let fixed = |n: usize| -> Result<&[u8], ClientError> {
        (payload.len() == n)
            .then_some(payload)
            .ok_or_else(|| schema_error(format!("{:?} message of {} bytes", writer.schema_type, payload.len())))
    };
    Ok(match writer.schema_type {
        SchemaType::None => Value::from(payload.to_vec()),
        SchemaType::String => Value::String(StringSchema.decode(payload)?),
        SchemaType::Json => serde_json::from_slice(payload).map_err(|source| ClientError::Json { source })?,
        SchemaType::Avro => {
            let schema = parse_avro(&String::from_utf8_lossy(&writer.data))?;
            let value = read_datum(&schema, None, payload)?;
            Value::try_from(value).map_err(avro_error)?
        }
        SchemaType::Bool => Value::Bool(BoolSchema.decode(payload)?),
        SchemaType::Int8 => Value::from(i8::from_be_bytes(fixed(1)?.try_into().unwrap_or_default())),
        SchemaType::Int16 => Value::from(Int16Schema.decode(payload)?),
        SchemaType::Int32 => Value::from(Int32Schema.decode(payload)?),
        SchemaType::Int64 | SchemaType::Timestamp | SchemaType::Date | SchemaType::Time => {
            Value::from(Int64Schema.decode(payload)?)
        }
        SchemaType::Float => Value::from(FloatSchema.decode(payload)?),
        SchemaType::Double => Value::from(DoubleSchema.decode(payload)?),
        SchemaType::KeyValue => {
            let (key_data, value_data) = split_parts(&writer.data)?;
            let part = |prefix: &str, data: &[u8]| SchemaInfo {
                name: String::new(),
                schema_type: type_from_name(
                    writer.properties.get(&format!("{prefix}.schema.type")).map_or("BYTES", String::as_str),
                ),
                data: data.to_vec(),
                properties: BTreeMap::new(),
            };
            let (key_schema, value_schema) = (part("key", key_data), part("value", value_data));
            let separated = writer.properties.get("kv.encoding.type").is_some_and(|e| e == "SEPARATED");
            let (key, value) = if separated {
                (key.ok_or_else(|| schema_error("a SEPARATED KeyValue message has no key"))?, payload)
            } else {
                split_parts(payload)?
            };
            serde_json::json!({"key": dynamic(key, &key_schema, None)?, "value": dynamic(value, &value_schema, None)?})
        }
        other => return Err(schema_error(format!("AUTO_CONSUME cannot decode {other:?} messages"))),
    })
}

impl Schema for AutoConsumeSchema {
    type Value = serde_json::Value;

    fn info(&self) -> SchemaInfo {
        SchemaInfo::new(SchemaType::AutoConsume, Vec::new())
    }

    fn encode(&self, _value: &serde_json::Value) -> Result<Vec<u8>, ClientError> {
        Err(schema_error("AUTO_CONSUME is for consumers"))
    }

    fn decode(&self, payload: &[u8]) -> Result<serde_json::Value, ClientError> {
        dynamic(payload, &SchemaInfo::new(SchemaType::None, Vec::new()), None)
    }

    fn value_of(&self, message: &Message, writer: Option<&SchemaInfo>) -> Result<serde_json::Value, ClientError> {
        let bytes = SchemaInfo::new(SchemaType::None, Vec::new());
        let key = match (&message.key, message.key_is_base64) {
            (Some(key), true) => base64::engine::general_purpose::STANDARD.decode(key).ok(),
            (Some(key), false) => Some(key.as_bytes().to_vec()),
            (None, _) => None,
        };
        dynamic(&message.payload, writer.unwrap_or(&bytes), key.as_deref())
    }
}

impl ProducerBuilder {
    /// Typed messages: the schema is registered (or found) on the topic when the producer is
    /// created, and every message carries its version.
    pub fn with_schema<S: Schema>(mut self, schema: S) -> TypedProducerBuilder<S> {
        self.schema = schema.info().to_wire();
        TypedProducerBuilder::new(self, schema)
    }
}

impl ConsumerBuilder {
    /// Typed messages: the schema is sent in SUBSCRIBE (the broker checks it can read the
    /// topic's) and each message is decoded with the schema version it was written with.
    pub fn with_schema<S: Schema>(mut self, schema: S) -> TypedConsumerBuilder<S> {
        self.schema = schema.info().to_wire();
        TypedConsumerBuilder::new(self, schema)
    }
}

/// Builds a [`TypedProducer`]; from [`ProducerBuilder::with_schema`].
pub struct TypedProducerBuilder<S> {
    inner: ProducerBuilder,
    schema: S,
}

impl<S: Schema> TypedProducerBuilder<S> {
    pub(crate) fn new(inner: ProducerBuilder, schema: S) -> Self {
        TypedProducerBuilder { inner, schema }
    }

    /// The other producer settings, as on [`ProducerBuilder`].
    pub fn configure(mut self, configure: impl FnOnce(ProducerBuilder) -> ProducerBuilder) -> Self {
        self.inner = configure(self.inner);
        self
    }

    /// Creates the producer; a schema the topic's rules refuse is
    /// [`ClientError::Server`] with code IncompatibleSchema.
    pub async fn create(self) -> Result<TypedProducer<S>, ClientError> {
        Ok(TypedProducer { inner: self.inner.create().await?, schema: self.schema })
    }
}

/// A producer of typed values.
pub struct TypedProducer<S> {
    inner: Producer,
    schema: S,
}

impl<S: Schema> TypedProducer<S> {
    pub async fn send(&mut self, value: &S::Value) -> Result<MessageId, ClientError> {
        let message = self.schema.message(value)?;
        self.inner.send_with(message).await
    }

    /// Sends `value` with a key (not for SEPARATED KeyValue, whose key is the value's).
    pub async fn send_with_key(&mut self, key: impl Into<String>, value: &S::Value) -> Result<MessageId, ClientError> {
        let message = self.schema.message(value)?.key(key);
        self.inner.send_with(message).await
    }

    /// The untyped producer (flush, close, names).
    pub fn inner_mut(&mut self) -> &mut Producer {
        &mut self.inner
    }

    /// The untyped producer, still stamping the schema's version on what it sends.
    pub fn into_inner(self) -> Producer {
        self.inner
    }

    pub async fn close(self) -> Result<(), ClientError> {
        self.inner.close().await
    }
}

/// Builds a [`TypedConsumer`]; from [`ConsumerBuilder::with_schema`].
pub struct TypedConsumerBuilder<S> {
    inner: ConsumerBuilder,
    schema: S,
}

impl<S: Schema> TypedConsumerBuilder<S> {
    pub(crate) fn new(inner: ConsumerBuilder, schema: S) -> Self {
        TypedConsumerBuilder { inner, schema }
    }

    /// The other consumer settings, as on [`ConsumerBuilder`].
    pub fn configure(mut self, configure: impl FnOnce(ConsumerBuilder) -> ConsumerBuilder) -> Self {
        self.inner = configure(self.inner);
        self
    }

    pub async fn subscribe(self) -> Result<TypedConsumer<S>, ClientError> {
        let client = self.inner.client().clone();
        let own = self.schema.info();
        Ok(TypedConsumer {
            inner: self.inner.subscribe().await?,
            schema: self.schema,
            client,
            own,
            writers: Arc::default(),
        })
    }
}

/// A message and its decoded value.
#[derive(Debug)]
pub struct TypedMessage<T> {
    pub message: Message,
    pub value: T,
}

/// A consumer of typed values.
pub struct TypedConsumer<S> {
    inner: Consumer,
    schema: S,
    client: Client,
    own: SchemaInfo,
    /// Writer schemas by (topic, version), fetched once.
    writers: Arc<Mutex<HashMap<(String, Vec<u8>), SchemaInfo>>>,
}

impl<S: Schema> TypedConsumer<S> {
    /// The next message, decoded with the schema version it was written with. A message
    /// that does not decode is an error for that message; the next call goes on.
    pub async fn receive(&mut self) -> Result<TypedMessage<S::Value>, ClientError> {
        let message = self.inner.receive().await?;
        let writer = self.writer_of(&message).await?;
        let value = self.schema.value_of(&message, writer.as_ref())?;
        Ok(TypedMessage { message, value })
    }

    /// The schema `message` was written with when it is not this consumer's own (`None`: the
    /// same, or a message without a version).
    async fn writer_of(&self, message: &Message) -> Result<Option<SchemaInfo>, ClientError> {
        let Some(version) = message.schema_version.clone() else {
            return Ok(match self.own.schema_type {
                SchemaType::AutoConsume => Some(SchemaInfo::new(SchemaType::None, Vec::new())),
                _ => None,
            });
        };
        let key = (base_topic(&message.topic), version.clone());
        if let Some(found) = self.writers.lock().get(&key) {
            return Ok(same_or(found, &self.own));
        }
        let found = self.client.get_schema(&key.0, Some(&version)).await?.ok_or_else(|| {
            schema_error(format!("the schema version of message {} is not in the registry", message.id))
        })?;
        let answer = same_or(&found, &self.own);
        self.writers.lock().insert(key, found);
        Ok(answer)
    }

    pub async fn ack(&mut self, message: &TypedMessage<S::Value>) -> Result<(), ClientError> {
        self.inner.ack(&message.message).await
    }

    /// The untyped consumer (acks, seeks, names).
    pub fn inner_mut(&mut self) -> &mut Consumer {
        &mut self.inner
    }

    /// The untyped consumer (its subscription was checked against the schema).
    pub fn into_inner(self) -> Consumer {
        self.inner
    }
}

/// `found`, unless it is this consumer's own schema.
fn same_or(found: &SchemaInfo, own: &SchemaInfo) -> Option<SchemaInfo> {
    (found.schema_type != own.schema_type || found.data != own.data).then(|| found.clone())
}

/// A partition's schema is its partitioned topic's.
fn base_topic(topic: &str) -> String {
    match topic.rsplit_once("-partition-") {
        Some((base, index)) if index.chars().all(|c| c.is_ascii_digit()) => base.to_owned(),
        _ => topic.to_owned(),
    }
}

impl Client {
    /// The topic's schema (the latest, or `version`), by GET_SCHEMA; `None` when it has none.
    pub async fn get_schema(&self, topic: &str, version: Option<&[u8]>) -> Result<Option<SchemaInfo>, ClientError> {
        let name = TopicName::parse(topic)?;
        let connection = self.lookup_connection(&name).await?;
        let topic = name.to_string();
        let answer = connection
            .request(|request_id| BaseCommand {
                command_type: Type::GetSchema as i32,
                get_schema: Some(pb::CommandGetSchema {
                    request_id,
                    topic,
                    schema_version: version.map(<[u8]>::to_vec),
                }),
                ..Default::default()
            })
            .await;
        let response = match answer {
            Ok(command) => command.get_schema_response.ok_or_else(|| ClientError::UnexpectedResponse {
                broker: connection.broker().to_string(),
                expected: "GET_SCHEMA_RESPONSE",
                got: "another answer".into(),
            })?,
            Err(error) => return Err(error),
        };
        match (response.error_code, response.schema) {
            (Some(code), _) if code == pb::ServerError::TopicNotFound as i32 => Ok(None),
            (Some(code), _) => Err(ClientError::from_server(code, response.error_message.unwrap_or_default())),
            (None, Some(schema)) => Ok(Some(SchemaInfo::from_wire(&schema))),
            (None, None) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct User {
        name: String,
        age: i32,
    }

    const USER: &str =
        r#"{"type":"record","name":"User","fields":[{"name":"name","type":"string"},{"name":"age","type":"int"}]}"#;

    #[test]
    fn primitives_are_big_endian() {
        assert_eq!(Int32Schema.encode(&1).unwrap(), [0, 0, 0, 1]);
        assert_eq!(Int64Schema.decode(&[0, 0, 0, 0, 0, 0, 1, 0]).unwrap(), 256);
        assert!(Int64Schema.decode(&[1, 2]).is_err());
        assert_eq!(DoubleSchema.decode(&DoubleSchema.encode(&1.5).unwrap()).unwrap(), 1.5);
        assert!(BoolSchema.decode(&[]).is_err());
        assert!(StringSchema.decode(&[0xff]).is_err());
        assert_eq!(BytesSchema.info().to_wire(), None, "bytes send no schema");
    }

    #[test]
    fn json_and_avro_round_trip_and_avro_resolves_old_writers() {
        let user = User { name: "ann".into(), age: 7 };
        let json = JsonSchema::<User>::new(USER).unwrap();
        assert_eq!(json.decode(&json.encode(&user).unwrap()).unwrap(), user);
        assert_eq!(json.info().schema_type, SchemaType::Json);
        let avro = AvroSchema::<User>::new(USER).unwrap();
        let bytes = avro.encode(&user).unwrap();
        assert_eq!(avro.decode(&bytes).unwrap(), user);
        // Data written with an older definition (no `age`) resolves with the default.
        let old = r#"{"type":"record","name":"User","fields":[{"name":"name","type":"string"}]}"#;
        let new = r#"{"type":"record","name":"User","fields":[{"name":"name","type":"string"},{"name":"age","type":"int","default":3}]}"#;
        #[derive(serde::Serialize, serde::Deserialize)]
        struct OldUser {
            name: String,
        }
        let old_bytes = AvroSchema::<OldUser>::new(old).unwrap().encode(&OldUser { name: "bo".into() }).unwrap();
        let reader = AvroSchema::<User>::new(new).unwrap();
        let writer = SchemaInfo::new(SchemaType::Avro, old.as_bytes().to_vec());
        assert_eq!(reader.decode_from(&old_bytes, &writer).unwrap(), User { name: "bo".into(), age: 3 });
        assert!(AvroSchema::<User>::new("{").is_err());
        assert!(avro.decode(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn key_value_layout_is_pulsars() {
        let kv = KeyValueSchema::new(StringSchema, Int32Schema, KeyValueEncoding::Inline);
        let bytes = kv.encode(&("k".to_owned(), 5)).unwrap();
        assert_eq!(bytes, [0, 0, 0, 1, b'k', 0, 0, 0, 4, 0, 0, 0, 5]);
        assert_eq!(kv.decode(&bytes).unwrap(), ("k".to_owned(), 5));
        let info = kv.info();
        assert_eq!(info.properties["key.schema.type"], "STRING");
        assert_eq!(info.properties["value.schema.type"], "INT32");
        assert_eq!(info.properties["kv.encoding.type"], "INLINE");
        assert!(kv.decode(&[0, 0, 0, 9, 1]).is_err());
        let separated = KeyValueSchema::new(StringSchema, StringSchema, KeyValueEncoding::Separated);
        let message = separated.message(&("key".into(), "value".into())).unwrap();
        assert!(message.key_is_base64);
        assert_eq!(message.payload().as_ref(), b"value");
    }

    #[test]
    fn auto_consume_reads_by_the_writer_schema() {
        let avro = AvroSchema::<User>::new(USER).unwrap();
        let bytes = avro.encode(&User { name: "cy".into(), age: 2 }).unwrap();
        let value = dynamic(&bytes, &avro.info(), None).unwrap();
        assert_eq!(value, serde_json::json!({"name": "cy", "age": 2}));
        let kv = KeyValueSchema::new(StringSchema, Int64Schema, KeyValueEncoding::Inline);
        let bytes = kv.encode(&("k".into(), 9)).unwrap();
        assert_eq!(dynamic(&bytes, &kv.info(), None).unwrap(), serde_json::json!({"key": "k", "value": 9}));
    }

    proptest::proptest! {
        #[test]
        fn random_payloads_never_panic(payload in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let avro = AvroSchema::<User>::new(USER).unwrap();
            let _ = avro.decode(&payload);
            let _ = KeyValueSchema::new(StringSchema, Int32Schema, KeyValueEncoding::Inline).decode(&payload);
            let _ = dynamic(&payload, &avro.info(), None);
            let _ = JsonSchema::<User>::new(USER).unwrap().decode(&payload);
        }
    }
}
