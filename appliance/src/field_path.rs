//! Deserialize a `serde_json::Value` while tracking where the first error happened, so
//! that a refused document names the offending field (`"uplink.gateway"`,
//! `"peers[2].address"`). serde_json's own messages only give line and column.
//! This module only locates errors; it never decides what is valid.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;
use serde_json::Value;

/// A deserialization error with the dotted path of the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path (`"uplink.address"`, `"peers[0].vni"`); empty for the document itself.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

#[derive(Clone)]
enum Segment {
    Key(String),
    Index(usize),
}

fn render(path: &[Segment]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Deserialize `T` from `value`; on error, say which field it was about.
pub fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, FieldError> {
    from_value_at(value, Vec::new())
}

/// Deserialize `T` from `value`, the item at `index` of the document's list `list`;
/// on error, the field is named as `from_value` on the whole document names it
/// (`containers[3].name`).
pub fn from_item<T: DeserializeOwned>(
    value: &Value,
    list: &str,
    index: usize,
) -> Result<T, FieldError> {
    from_value_at(
        value,
        alloc::vec![Segment::Key(list.to_owned()), Segment::Index(index)],
    )
}

fn from_value_at<T: DeserializeOwned>(value: &Value, path: Vec<Segment>) -> Result<T, FieldError> {
    let track = Track {
        failed_at: RefCell::new(None),
    };
    let root = path.clone();
    let de = PathDeserializer {
        value,
        path,
        track: &track,
    };
    T::deserialize(de).map_err(|err| {
        let path = track.failed_at.into_inner().unwrap_or(root);
        let message = err.to_string();
        let mut field = render(&path);
        // Missing fields are only noticed after the whole object was read: the path is the
        // object's, and serde names the field in the message.
        if let Some(name) = missing_field_name(&message) {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(name);
        }
        FieldError { field, message }
    })
}

fn missing_field_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

struct Track {
    failed_at: RefCell<Option<Vec<Segment>>>,
}

impl Track {
    /// Record the first (deepest) failing path; outer levels see it already set.
    fn fail<E>(&self, path: &[Segment], err: E) -> E {
        let mut slot = self.failed_at.borrow_mut();
        if slot.is_none() {
            *slot = Some(path.to_vec());
        }
        err
    }
}

struct PathDeserializer<'a, 'de> {
    value: &'de Value,
    path: Vec<Segment>,
    track: &'a Track,
}

type Error = serde_json::Error;

impl<'a, 'de> de::Deserializer<'de> for PathDeserializer<'a, 'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let result = match self.value {
            Value::Object(map) => visitor.visit_map(PathMap {
                iter: map.iter(),
                pending: None,
                path: &self.path,
                track: self.track,
            }),
            Value::Array(items) => visitor.visit_seq(PathSeq {
                iter: items.iter().enumerate(),
                path: &self.path,
                track: self.track,
            }),
            leaf => de::Deserializer::deserialize_any(leaf, visitor),
        };
        result.map_err(|e| self.track.fail(&self.path, e))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        // serde would also accept an array for a struct (by position); a document is
        // keyed, so only an object is a struct here.
        match self.value {
            Value::Object(_) => self.deserialize_any(visitor),
            other => {
                let err = de::Error::invalid_type(unexpected(other), &visitor);
                Err(self.track.fail(&self.path, err))
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        // Enums are leaves for path purposes (unit variants as strings are the common case).
        de::Deserializer::deserialize_enum(self.value, name, variants, visitor)
            .map_err(|e| self.track.fail(&self.path, e))
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map
        identifier ignored_any
    }
}

fn unexpected(v: &Value) -> de::Unexpected<'_> {
    match v {
        Value::Null => de::Unexpected::Unit,
        Value::Bool(b) => de::Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => de::Unexpected::Unsigned(u),
            (_, Some(i), _) => de::Unexpected::Signed(i),
            (_, _, Some(f)) => de::Unexpected::Float(f),
            _ => de::Unexpected::Other("number"),
        },
        Value::String(s) => de::Unexpected::Str(s),
        Value::Array(_) => de::Unexpected::Seq,
        Value::Object(_) => de::Unexpected::Map,
    }
}

struct PathMap<'a, 'de> {
    iter: serde_json::map::Iter<'de>,
    pending: Option<(&'de String, &'de Value)>,
    path: &'a [Segment],
    track: &'a Track,
}

impl<'de> de::MapAccess<'de> for PathMap<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, value)) = self.iter.next() else {
            return Ok(None);
        };
        self.pending = Some((key, value));
        let key_de: de::value::StrDeserializer<'_, Error> = key.as_str().into_deserializer();
        // An unknown key (deny_unknown_fields) fails here: the path names that key.
        seed.deserialize(key_de).map(Some).map_err(|e| {
            let mut path = self.path.to_vec();
            path.push(Segment::Key(key.to_owned()));
            self.track.fail(&path, e)
        })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let Some((key, value)) = self.pending.take() else {
            return Err(de::Error::custom("value requested before key"));
        };
        let mut path = self.path.to_vec();
        path.push(Segment::Key(key.clone()));
        let track = self.track;
        let de = PathDeserializer {
            value,
            path: path.clone(),
            track,
        };
        seed.deserialize(de).map_err(|e| track.fail(&path, e))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct PathSeq<'a, I> {
    iter: I,
    path: &'a [Segment],
    track: &'a Track,
}

impl<'de, I> de::SeqAccess<'de> for PathSeq<'_, I>
where
    I: Iterator<Item = (usize, &'de Value)> + ExactSizeIterator,
{
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let Some((index, value)) = self.iter.next() else {
            return Ok(None);
        };
        let mut path = self.path.to_vec();
        path.push(Segment::Index(index));
        let track = self.track;
        let de = PathDeserializer {
            value,
            path: path.clone(),
            track,
        };
        seed.deserialize(de)
            .map(Some)
            .map_err(|e| track.fail(&path, e))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// Render a JSON object's key as a path segment for errors found outside serde (validation).
pub fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        name: String,
        #[serde(default)]
        peers: Vec<Peer>,
        nested: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Peer {
        port: u16,
        mode: Mode,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        Vxlan,
        Sleeve,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        deep: Vec<Vec<u8>>,
    }

    fn field_of(v: Value) -> String {
        from_value::<Doc>(&v).expect_err("refused").field
    }

    #[test]
    fn paths_point_at_the_failing_field() {
        assert_eq!(field_of(json!({"peers": []})), "name");
        assert_eq!(field_of(json!({"name": 1})), "name");
        assert_eq!(field_of(json!({"name": "a", "extra": 1})), "extra");
        assert_eq!(
            field_of(
                json!({"name": "a", "peers": [{"port": 1, "mode": "vxlan"}, {"port": 70000, "mode": "vxlan"}]})
            ),
            "peers[1].port"
        );
        assert_eq!(
            field_of(json!({"name": "a", "peers": [{"port": 1, "mode": "gre"}]})),
            "peers[0].mode"
        );
        assert_eq!(
            field_of(json!({"name": "a", "peers": [{"mode": "sleeve"}]})),
            "peers[0].port"
        );
        assert_eq!(
            field_of(json!({"name": "a", "peers": [{"port": 1, "mode": "sleeve", "x": 0}]})),
            "peers[0].x"
        );
        assert_eq!(
            field_of(json!({"name": "a", "nested": {"deep": [[1], [2, -1]]}})),
            "nested.deep[1][1]"
        );
        assert_eq!(
            field_of(json!({"name": "a", "peers": {"port": 1}})),
            "peers"
        );
        assert_eq!(field_of(json!(3)), "");
        // A struct is an object, never a positional array.
        assert_eq!(field_of(json!({"name": "a", "nested": [[[1]]]})), "nested");
        assert_eq!(field_of(json!(["a"])), "");
    }

    #[test]
    fn valid_values_still_deserialize() {
        let doc: Doc = from_value(
            &json!({"name": "a", "peers": [{"port": 1, "mode": "sleeve"}], "nested": null}),
        )
        .unwrap();
        assert_eq!(doc.name, "a");
        assert_eq!(doc.peers.len(), 1);
        assert!(matches!(doc.peers[0].mode, Mode::Sleeve));
        assert!(doc.nested.is_none());
        let _ = Mode::Vxlan;
    }
}
