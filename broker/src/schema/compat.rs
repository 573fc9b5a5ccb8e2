//! Compatibility: Pulsar's strategies and the checks between two schemas.
//!
//! A strategy says against which versions a new schema is checked (the latest, or every one
//! since the last deletion for the `_TRANSITIVE` forms) and in which direction:
//! BACKWARD, the new schema can read what the old wrote (consumers upgrade first); FORWARD,
//! the old can read what the new writes (producers upgrade first); FULL, both.
//! ALWAYS_COMPATIBLE accepts any change, ALWAYS_INCOMPATIBLE none (a schema seen before is
//! still found by the registry). Schemas of different types are never compatible.
//!
//! Per type, as Pulsar's checkers: AVRO, JSON and PROTOBUF (Avro definitions) by Avro schema
//! resolution (field defaults, type promotion, unions, enums; apache-avro), a JSON Schema
//! document by equality; KEY_VALUE key with key and value with value; PROTOBUF_NATIVE by its
//! root message type name; every other type by equality of definitions.

use std::fmt;
use std::str::FromStr;

use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};

use super::definition::{avro_schema, protobuf_native_root, SchemaData, SchemaType};
use crate::error::BrokerError;

/// Pulsar's `SchemaCompatibilityStrategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    AlwaysIncompatible,
    AlwaysCompatible,
    Backward,
    Forward,
    /// Pulsar's default.
    #[default]
    Full,
    BackwardTransitive,
    ForwardTransitive,
    FullTransitive,
}

const STRATEGIES: [(Strategy, &str); 8] = [
    (Strategy::AlwaysIncompatible, "ALWAYS_INCOMPATIBLE"),
    (Strategy::AlwaysCompatible, "ALWAYS_COMPATIBLE"),
    (Strategy::Backward, "BACKWARD"),
    (Strategy::Forward, "FORWARD"),
    (Strategy::Full, "FULL"),
    (Strategy::BackwardTransitive, "BACKWARD_TRANSITIVE"),
    (Strategy::ForwardTransitive, "FORWARD_TRANSITIVE"),
    (Strategy::FullTransitive, "FULL_TRANSITIVE"),
];

impl Strategy {
    pub fn name(self) -> &'static str {
        STRATEGIES.iter().find(|(s, _)| *s == self).map_or("FULL", |(_, n)| n)
    }

    /// A strategy by Pulsar's name; `UNDEFINED` (and an empty string) is `None`: the next
    /// level (topic, namespace, broker) decides. Pulsar's older auto-update names (`Full`,
    /// `AutoUpdateDisabled`, ...) are read too.
    pub fn parse_policy(name: &str) -> Result<Option<Strategy>, String> {
        let name = name.trim();
        if name.is_empty() || name.eq_ignore_ascii_case("UNDEFINED") {
            return Ok(None);
        }
        if name.eq_ignore_ascii_case("AutoUpdateDisabled") {
            return Ok(Some(Strategy::AlwaysIncompatible));
        }
        // CamelCase (`BackwardTransitive`) becomes BACKWARD_TRANSITIVE.
        let camel = !name.contains('_') && name.chars().any(|c| c.is_ascii_lowercase());
        let normalized: String = name
            .chars()
            .enumerate()
            .flat_map(|(index, c)| {
                let split = camel && index > 0 && c.is_ascii_uppercase();
                split.then_some('_').into_iter().chain(std::iter::once(c.to_ascii_uppercase()))
            })
            .collect();
        STRATEGIES
            .iter()
            .find(|(_, n)| *n == normalized)
            .map(|(s, _)| Some(*s))
            .ok_or_else(|| format!("unknown schema compatibility strategy {name:?}"))
    }

    fn transitive(self) -> bool {
        matches!(self, Strategy::BackwardTransitive | Strategy::ForwardTransitive | Strategy::FullTransitive)
    }

    fn directions(self) -> (bool, bool) {
        match self {
            Strategy::Backward | Strategy::BackwardTransitive => (true, false),
            Strategy::Forward | Strategy::ForwardTransitive => (false, true),
            _ => (true, true),
        }
    }
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Strategy::parse_policy(name)?.ok_or_else(|| "UNDEFINED is not a strategy here".to_owned())
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn incompatible(what: impl Into<String>) -> BrokerError {
    BrokerError::IncompatibleSchema { what: what.into() }
}

/// Checks a producer's (or an admin's) new schema against the active versions of a topic
/// (oldest first) under `strategy`.
pub fn check_new(active: &[SchemaData], new: &SchemaData, strategy: Strategy) -> Result<(), BrokerError> {
    let Some(latest) = active.last() else { return Ok(()) };
    match strategy {
        Strategy::AlwaysCompatible => Ok(()),
        Strategy::AlwaysIncompatible => {
            Err(incompatible("the topic's schema compatibility strategy is ALWAYS_INCOMPATIBLE: no new version"))
        }
        _ => {
            let (backward, forward) = strategy.directions();
            let targets: &[SchemaData] = if strategy.transitive() { active } else { std::slice::from_ref(latest) };
            for existing in targets.iter().rev() {
                check_pair(existing, new, backward, forward)
                    .map_err(|reason| incompatible(format!("{reason} (strategy {strategy})")))?;
            }
            Ok(())
        }
    }
}

/// Checks a consumer's schema against a topic's active versions, as Pulsar does: it must be
/// able to read the latest version (every version under a `_TRANSITIVE` strategy).
pub fn check_reader(active: &[SchemaData], reader: &SchemaData, strategy: Strategy) -> Result<(), BrokerError> {
    let Some(latest) = active.last() else { return Ok(()) };
    if strategy == Strategy::AlwaysCompatible || active.contains(reader) {
        return Ok(());
    }
    let targets: &[SchemaData] = if strategy.transitive() { active } else { std::slice::from_ref(latest) };
    for existing in targets.iter().rev() {
        check_pair(existing, reader, true, false)
            .map_err(|reason| incompatible(format!("the consumer's schema cannot read the topic's: {reason}")))?;
    }
    Ok(())
}

/// `backward`: `new` reads what `old` wrote; `forward`: `old` reads what `new` writes.
fn check_pair(old: &SchemaData, new: &SchemaData, backward: bool, forward: bool) -> Result<(), String> {
    if old.schema_type != new.schema_type {
        return Err(format!("the topic's schema is {}, this one is {}", old.schema_type, new.schema_type));
    }
    match new.schema_type {
        SchemaType::KeyValue => {
            let split = |schema: &SchemaData| schema.key_value_parts().map_err(|error| error.to_string());
            let ((old_key, old_value), (new_key, new_value)) = (split(old)?, split(new)?);
            check_pair(&old_key, &new_key, backward, forward).map_err(|reason| format!("key: {reason}"))?;
            check_pair(&old_value, &new_value, backward, forward).map_err(|reason| format!("value: {reason}"))
        }
        SchemaType::ProtobufNative => {
            let root = |schema: &SchemaData| {
                protobuf_native_root(&String::from_utf8_lossy(&schema.data)).map_err(|error| error.to_string())
            };
            let (old_root, new_root) = (root(old)?, root(new)?);
            if old_root != new_root {
                return Err(format!("root message type {new_root} differs from the topic's {old_root}"));
            }
            Ok(())
        }
        schema_type if schema_type.is_avro_based() => {
            let parse = |schema: &SchemaData| avro_schema(std::str::from_utf8(&schema.data).ok()?).ok();
            match (parse(old), parse(new)) {
                (Some(old_avro), Some(new_avro)) => {
                    if backward {
                        can_read(&old_avro, &new_avro).map_err(|reason| format!("cannot read old data: {reason}"))?;
                    }
                    if forward {
                        can_read(&new_avro, &old_avro)
                            .map_err(|reason| format!("old readers cannot read new data: {reason}"))?;
                    }
                    Ok(())
                }
                _ if old.data == new.data => Ok(()),
                _ => Err("the definitions differ and are not both Avro".to_owned()),
            }
        }
        _ if old.data == new.data => Ok(()),
        schema_type => Err(format!("{schema_type} definitions differ")),
    }
}

/// Whether a reader with `reader` resolves every datum written with `writer`. A partial
/// resolution (an enum symbol or union branch the reader lacks) is a refusal, as Avro's
/// Java checker refuses it.
fn can_read(writer: &apache_avro::Schema, reader: &apache_avro::Schema) -> Result<(), String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => Ok(()),
        Ok(_) => Err("only some data would resolve (an enum symbol or union branch is missing)".to_owned()),
        Err(error) => Err(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn avro(fields: &str) -> SchemaData {
        let text = format!(r#"{{"type":"record","name":"User","namespace":"test","fields":[{fields}]}}"#);
        SchemaData { schema_type: SchemaType::Avro, data: text.into_bytes(), properties: BTreeMap::new() }
    }

    const NAME: &str = r#"{"name":"name","type":"string"}"#;
    const AGE_DEFAULT: &str = r#"{"name":"age","type":"int","default":0}"#;
    const AGE: &str = r#"{"name":"age","type":"int"}"#;

    #[test]
    fn strategies_parse_with_pulsar_names() {
        assert_eq!(Strategy::parse_policy("BACKWARD_TRANSITIVE"), Ok(Some(Strategy::BackwardTransitive)));
        assert_eq!(Strategy::parse_policy("UNDEFINED"), Ok(None));
        assert_eq!(Strategy::parse_policy("Full"), Ok(Some(Strategy::Full)));
        assert_eq!(Strategy::parse_policy("AlwaysCompatible"), Ok(Some(Strategy::AlwaysCompatible)));
        assert_eq!(Strategy::parse_policy("AutoUpdateDisabled"), Ok(Some(Strategy::AlwaysIncompatible)));
        assert!(Strategy::parse_policy("SIDEWAYS").is_err());
        assert_eq!(Strategy::default().name(), "FULL");
    }

    #[test]
    fn adding_a_field_without_default_is_forward_but_not_backward() {
        let v1 = avro(NAME);
        let v2 = avro(&format!("{NAME},{AGE}"));
        // The new reader needs `age`, which old data lacks: not BACKWARD.
        assert!(check_new(&[v1.clone()], &v2, Strategy::Backward).is_err());
        // Old readers ignore `age`: FORWARD.
        assert!(check_new(&[v1.clone()], &v2, Strategy::Forward).is_ok());
        assert!(check_new(&[v1.clone()], &v2, Strategy::Full).is_err());
        // With a default it is both.
        let v2_default = avro(&format!("{NAME},{AGE_DEFAULT}"));
        assert!(check_new(&[v1.clone()], &v2_default, Strategy::Full).is_ok());
        assert!(check_new(&[v1.clone()], &v2, Strategy::AlwaysCompatible).is_ok());
        assert!(check_new(&[v1], &v2_default, Strategy::AlwaysIncompatible).is_err());
    }

    #[test]
    fn removing_a_field_without_default_is_backward_but_not_forward() {
        let v1 = avro(&format!("{NAME},{AGE}"));
        let v2 = avro(NAME);
        assert!(check_new(&[v1.clone()], &v2, Strategy::Backward).is_ok());
        assert!(check_new(&[v1], &v2, Strategy::Forward).is_err());
    }

    #[test]
    fn type_promotion_follows_avro() {
        let int = avro(AGE);
        let long = avro(r#"{"name":"age","type":"long"}"#);
        assert!(check_new(&[int.clone()], &long, Strategy::Backward).is_ok(), "int promotes to long");
        assert!(check_new(&[long], &int, Strategy::Backward).is_err(), "long does not narrow to int");
    }

    #[test]
    fn transitive_checks_every_active_version() {
        let v1 = avro(NAME);
        let v2 = avro(&format!("{NAME},{AGE_DEFAULT}"));
        // v3 drops `name` (no default) and makes `age` required: readable from v2 only.
        let v3 = avro(AGE);
        assert!(check_new(&[v1.clone(), v2.clone()], &v3, Strategy::Backward).is_ok());
        assert!(check_new(&[v1, v2], &v3, Strategy::BackwardTransitive).is_err());
    }

    #[test]
    fn different_types_and_primitives() {
        let string = SchemaData { schema_type: SchemaType::String, data: Vec::new(), properties: BTreeMap::new() };
        let error = check_new(&[string.clone()], &avro(NAME), Strategy::Full).unwrap_err().to_string();
        assert!(error.contains("STRING") && error.contains("AVRO"), "{error}");
        assert!(check_new(&[string.clone()], &string, Strategy::Full).is_ok());
    }

    #[test]
    fn readers_must_read_the_latest() {
        let v1 = avro(&format!("{NAME},{AGE}"));
        let reader = avro(NAME);
        assert!(check_reader(&[v1.clone()], &reader, Strategy::Full).is_ok());
        let needs_more = avro(&format!("{NAME},{AGE},{}", r#"{"name":"x","type":"int"}"#));
        assert!(check_reader(&[v1], &needs_more, Strategy::Full).is_err());
    }
}
