//! The configuration document parsed from its JSON text, for documents far larger than a
//! request line (`apply-commit`). The list sections (`networks`, `peers`, `containers`,
//! `publish`, `services`) are read one item at a time, each item typed as soon as it is
//! read; only the other, small sections become `serde_json::Value`s. So the document is
//! never held as one `Value` tree, which takes several times the size of its text.
//!
//! The outcome is that of `field_path::from_value::<Config>` on the same document: the
//! same `Config`, or a refusal naming the same field. An item of a flat type (no struct
//! inside it) written as an object is typed straight from its text, which allocates
//! nothing but the item; any other, or one that fails so, goes through a `Value` and
//! `field_path` as `from_value` would take it, which decides. This module only parses:
//! the rules are `Config::validate`'s, and nothing here applies anything.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess,
    Visitor,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};
use weft_netstack::stage::lb::ServiceConfig;
use weft_netstack::stage::nat::PublishRule;
use weft_netstack::stage::overlay::config::{NetworkConfig, PeerConfig};

use crate::config::{Config, ConfigError};
use crate::dns::ContainerEntry;
use crate::field_path::{self, FieldError};

/// Parses a document's JSON text into a `Config`, without validating it.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let mut lists = Lists::default();
    let mut de = serde_json::Deserializer::from_str(text);
    let head = de
        .deserialize_map(DocumentVisitor { lists: &mut lists })
        .and_then(|head| de.end().map(|()| head))
        .map_err(|e| ConfigError {
            field: String::new(),
            message: alloc::format!("not JSON: {e}"),
        })?;
    let mut config: Config = match field_path::from_value(&Value::Object(head)) {
        Ok(config) => config,
        // A list whose item was refused stands in the head as a placeholder that fails
        // in its place, so the refusal reported is the one `from_value` would have
        // reached first on the whole document.
        Err(e) => return Err(lists.refusal_at(first_key(&e.field)).unwrap_or(e).into()),
    };
    config.networks = lists.networks.take_items();
    config.peers = lists.peers.take_items();
    config.containers = lists.containers.take_items();
    config.publish = lists.publish.take_items();
    config.services = lists.services.take_items();
    Ok(config)
}

/// The first key of a dotted path (`containers[3].name` -> `containers`).
fn first_key(field: &str) -> &str {
    let end = field.find(['.', '[']).unwrap_or(field.len());
    &field[..end]
}

/// A list section as read: every item typed, or the first item refused.
enum Section<T> {
    Items(Vec<T>),
    Refused(FieldError),
    /// Not a list: left to the head, where it is refused as `from_value` refuses it.
    Other(Value),
}

/// The outcome of the latest occurrence of each list section (a key given twice counts
/// once, as in a `Value` object: the last one).
struct Slot<T>(Option<Result<Vec<T>, FieldError>>);

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot(None)
    }
}

impl<T> Slot<T> {
    /// Keeps what `section` holds; returns what stands for it in the head.
    fn settle(&mut self, section: Section<T>) -> Value {
        match section {
            Section::Items(items) => {
                self.0 = Some(Ok(items));
                Value::Array(Vec::new())
            }
            Section::Refused(e) => {
                self.0 = Some(Err(e));
                // Any non-list fails `Vec<T>` at this key.
                Value::Bool(false)
            }
            Section::Other(value) => {
                self.0 = None;
                value
            }
        }
    }

    fn refusal(&self) -> Option<FieldError> {
        match &self.0 {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        }
    }

    fn take_items(&mut self) -> Vec<T> {
        match self.0.take() {
            Some(Ok(items)) => items,
            _ => Vec::new(),
        }
    }
}

#[derive(Default)]
struct Lists {
    networks: Slot<NetworkConfig>,
    peers: Slot<PeerConfig>,
    containers: Slot<ContainerEntry>,
    publish: Slot<PublishRule>,
    services: Slot<ServiceConfig>,
}

impl Lists {
    fn refusal_at(&self, key: &str) -> Option<FieldError> {
        match key {
            "networks" => self.networks.refusal(),
            "peers" => self.peers.refusal(),
            "containers" => self.containers.refusal(),
            "publish" => self.publish.refusal(),
            "services" => self.services.refusal(),
            _ => None,
        }
    }
}

/// The top level: list sections item by item, every other member as a `Value`.
struct DocumentVisitor<'a> {
    lists: &'a mut Lists,
}

impl<'de> Visitor<'de> for DocumentVisitor<'_> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a configuration document (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let lists = self.lists;
        let mut head = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let stand_in = match key.as_str() {
                "networks" => lists
                    .networks
                    .settle(map.next_value_seed(ListSeed::new(&key))?),
                "peers" => lists
                    .peers
                    .settle(map.next_value_seed(ListSeed::new(&key))?),
                "containers" => lists
                    .containers
                    .settle(map.next_value_seed(ListSeed::new(&key))?),
                "publish" => lists
                    .publish
                    .settle(map.next_value_seed(ListSeed::new(&key))?),
                "services" => lists
                    .services
                    .settle(map.next_value_seed(ListSeed::new(&key))?),
                _ => map.next_value::<Value>()?,
            };
            head.insert(key, stand_in);
        }
        Ok(head)
    }
}

/// One list section: each item read as a small `Value` and typed at once.
struct ListSeed<'k, T> {
    key: &'k str,
    item: PhantomData<T>,
}

impl<'k, T> ListSeed<'k, T> {
    fn new(key: &'k str) -> Self {
        ListSeed {
            key,
            item: PhantomData,
        }
    }
}

/// A list item type, and whether it is flat: no field is itself a struct, so an item
/// written as a JSON object cannot be read by position anywhere inside (serde_json
/// would take an array for a struct; `from_value` never does).
trait Item: DeserializeOwned {
    const FLAT: bool;
}

impl Item for NetworkConfig {
    const FLAT: bool = true;
}

impl Item for PeerConfig {
    const FLAT: bool = true;
}

impl Item for ContainerEntry {
    const FLAT: bool = true;
}

impl Item for PublishRule {
    const FLAT: bool = true;
}

impl Item for ServiceConfig {
    // `backends` and `health` are structs.
    const FLAT: bool = false;
}

impl<'de, T: Item> DeserializeSeed<'de> for ListSeed<'_, T> {
    type Value = Section<T>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Section<T>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: Item> Visitor<'de> for ListSeed<'_, T> {
    type Value = Section<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Section<T>, A::Error> {
        let mut items = Vec::new();
        while let Some(raw) = seq.next_element::<&RawValue>()? {
            let text = raw.get();
            let direct = (T::FLAT && text.starts_with('{'))
                .then(|| serde_json::from_str::<T>(text).ok())
                .flatten();
            let item = match direct {
                Some(item) => Ok(item),
                // As `from_value` reads it, which decides (it takes a key given twice,
                // for one, which serde_json's typed reading refuses).
                None => serde_json::from_str::<Value>(text)
                    .map_err(de::Error::custom)
                    .map(|value| field_path::from_item::<T>(&value, self.key, items.len()))?,
            };
            match item {
                Ok(item) => items.push(item),
                Err(e) => {
                    // The rest must still be read (and be JSON) to reach the next key.
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    return Ok(Section::Refused(e));
                }
            }
        }
        Ok(Section::Items(items))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Section<T>, E> {
        Ok(Section::Other(Value::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Section<T>, E> {
        Ok(Section::Other(Value::Number(v.into())))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Section<T>, E> {
        Ok(Section::Other(Value::Number(v.into())))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Section<T>, E> {
        Ok(Section::Other(
            Number::from_f64(v).map_or(Value::Null, Value::Number),
        ))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Section<T>, E> {
        Ok(Section::Other(Value::String(v.to_string())))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Section<T>, E> {
        Ok(Section::Other(Value::Null))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Section<T>, A::Error> {
        let value = Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(Section::Other(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::vec;
    use serde_json::json;

    fn both(doc: &Value) -> (Result<Config, ConfigError>, Result<Config, ConfigError>) {
        let by_value = field_path::from_value::<Config>(doc).map_err(ConfigError::from);
        let by_text = parse(&doc.to_string());
        (by_value, by_text)
    }

    fn assert_same(doc: &Value) {
        let (by_value, by_text) = both(doc);
        match (&by_value, &by_text) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{doc}"),
            (Err(a), Err(b)) => assert_eq!(a.field, b.field, "{doc}: {a} / {b}"),
            _ => panic!("{doc}: by value {by_value:?}, by text {by_text:?}"),
        }
    }

    fn base() -> Value {
        json!({
            "uplink": {"address": "192.0.2.11/24", "gateway": "192.0.2.1"},
            "link": {"address": "10.81.0.1/16"},
            "grid": {"node": 1},
            "networks": [{"name": "a", "vni": 100}],
            "peers": [{"node": 2, "address": "192.0.2.12", "networks": ["a"]}],
            "dns": {"grid": "g"},
            "containers": [
                {"name": "c1", "service": "s", "address": "10.81.1.1"},
                {"name": "c2", "address": "10.81.1.2"}
            ],
            "publish": [{"proto": "tcp", "host_port": 8080,
                         "container_address": "10.81.1.1", "container_port": 80}],
            "services": [{"name": "web", "vip": "10.81.255.1", "proto": "tcp", "port": 80,
                          "backends": [{"address": "10.81.1.1", "port": 80}]}]
        })
    }

    fn with(mut doc: Value, key: &str, v: Value) -> Value {
        doc[key] = v;
        doc
    }

    #[test]
    fn a_document_parses_to_the_same_config_as_from_its_value() {
        let doc = base();
        let (by_value, by_text) = both(&doc);
        assert_eq!(by_text.unwrap(), by_value.unwrap());
        assert_same(
            &json!({"uplink": {"address": "192.0.2.2/24"}, "link": {"address": "10.81.0.1/16"}}),
        );
    }

    #[test]
    fn refusals_name_the_field_from_value_names() {
        let cases: Vec<(Value, &str)> = vec![
            (
                with(base(), "containers", json!([{"name": "x", "address": 5}])),
                "containers[0].address",
            ),
            (
                with(
                    base(),
                    "containers",
                    json!([{"name": "x", "address": "1.2.3.4"}, 7]),
                ),
                "containers[1]",
            ),
            (
                with(base(), "containers", json!([{"name": "x"}])),
                "containers[0].address",
            ),
            (with(base(), "containers", json!(5)), "containers"),
            (with(base(), "containers", json!(null)), "containers"),
            (with(base(), "containers", json!({"a": 1})), "containers"),
            (
                with(
                    base(),
                    "peers",
                    json!([{"node": 0, "address": "192.0.2.12", "networks": []}]),
                ),
                "peers[0].node",
            ),
            (
                with(
                    base(),
                    "services",
                    json!([{"name": "w", "proto": "tcp", "port": 80, "backends": [{"address": "10.0.0.1", "port": "x"}]}]),
                ),
                "services[0].backends[0].port",
            ),
            (with(base(), "bogus", json!(1)), "bogus"),
            // Two refusals: the one `from_value` meets first (map order) is reported.
            (
                with(with(base(), "bogus", json!(1)), "containers", json!([3])),
                "bogus",
            ),
            (
                with(with(base(), "zzz", json!(1)), "containers", json!([3])),
                "containers[0]",
            ),
            (
                with(with(base(), "link", json!(1)), "publish", json!([3])),
                "link",
            ),
            (
                with(with(base(), "link", json!(1)), "containers", json!([3])),
                "containers[0]",
            ),
            (
                json!({"link": {"address": "10.81.0.1/16"}, "peers": [1]}),
                "peers[0]",
            ),
            (json!({"link": {"address": "10.81.0.1/16"}}), "uplink"),
            (json!([1]), ""),
            (json!("x"), ""),
        ];
        for (doc, field) in cases {
            let (by_value, by_text) = both(&doc);
            let (a, b) = (by_value.unwrap_err(), by_text.unwrap_err());
            assert_eq!(a.field, field, "{doc}: {a}");
            assert_eq!(b.field, field, "{doc}: {b}");
        }
    }

    #[test]
    fn a_key_given_twice_counts_once_as_the_last() {
        let text = r#"{"uplink":{"address":"192.0.2.2/24"},"link":{"address":"10.81.0.1/16"},
            "dns":{},"containers":[{"name":"a","address":"10.81.1.1"}],
            "containers":[{"name":"b","address":"10.81.1.2"}]}"#;
        let c = parse(text).unwrap();
        assert_eq!(c.containers.len(), 1);
        assert_eq!(c.containers[0].name, "b");
        let text = r#"{"uplink":{"address":"192.0.2.2/24"},"link":{"address":"10.81.0.1/16"},
            "dns":{},"containers":[7],"containers":[{"name":"b","address":"10.81.1.2"}]}"#;
        assert!(parse(text).is_ok());
        // Inside an item too.
        let text = r#"{"uplink":{"address":"192.0.2.2/24"},"link":{"address":"10.81.0.1/16"},
            "dns":{},"containers":[{"name":"a","address":"10.81.1.2","name":"b"}]}"#;
        assert_eq!(parse(text).unwrap().containers[0].name, "b");
        let text = r#"{"uplink":{"address":"192.0.2.2/24"},"link":{"address":"10.81.0.1/16"},
            "dns":{},"containers":[{"name":"b","address":"10.81.1.2"}],"containers":5}"#;
        assert_eq!(parse(text).unwrap_err().field, "containers");
    }

    #[test]
    fn text_that_is_not_one_json_object_is_refused_whole() {
        for text in [
            "",
            "{",
            "{\"uplink\":",
            "{} {}",
            "{\"containers\":[1,}",
            "nul",
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.field, "", "{text:?}");
            assert!(e.message.starts_with("not JSON"), "{text:?}: {}", e.message);
        }
    }

    /// Random edits of a good document, each parsed both ways: the same outcome.
    #[test]
    fn random_documents_parse_alike_both_ways() {
        let mut rng = weft_netstack::base::test_rng::Rng::new(0x9e37_79b9_7f4a_7c15);
        let mut next = move |n: u64| rng.below(n);
        let junk = [
            json!(1),
            json!(-1),
            json!(1.5),
            json!("x"),
            json!(null),
            json!(true),
            json!([]),
            json!({}),
            json!([1]),
            json!({"name": "q", "address": "10.81.9.9"}),
            json!([{"name": "q", "address": "10.81.9.9"}]),
        ];
        let keys = [
            "uplink",
            "link",
            "grid",
            "networks",
            "peers",
            "dns",
            "containers",
            "publish",
            "services",
            "nat",
            "extra",
        ];
        for _ in 0..3_000 {
            let mut doc = base();
            for _ in 0..=next(3) {
                let key = keys[next(keys.len() as u64) as usize];
                let v = junk[next(junk.len() as u64) as usize].clone();
                match (next(3), doc.get_mut(key)) {
                    (0, _) => {
                        doc.as_object_mut().unwrap().remove(key);
                    }
                    (1, Some(Value::Array(items))) if !items.is_empty() => {
                        let i = next(items.len() as u64) as usize;
                        items[i] = v;
                    }
                    _ => doc[key] = v,
                }
            }
            assert_same(&doc);
            // And the same text with its keys in another order.
            let text = doc.to_string();
            if let Value::Object(m) = &doc {
                let reversed: Vec<String> = m
                    .iter()
                    .rev()
                    .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
                    .collect();
                let text2 = format!("{{{}}}", reversed.join(","));
                let a = parse(&text).map_err(|e| e.field);
                let b = parse(&text2).map_err(|e| e.field);
                assert_eq!(a, b, "{text} / {text2}");
            }
        }
    }
}
