//! Parsing Canonical Form of a schema, computed from its JSON the way the Java reference
//! implementation and Python fastavro compute it (what makes fingerprints interoperable).
//!
//! apache-avro 0.21's `Schema::canonical_form` is not used: it writes a primitive with a logical
//! type as `{"type":"long"}` where Java and fastavro write `"long"`, so its fingerprints of schemas
//! with logical types (ours: `send_time`, `server_time`) differ from theirs (see also
//! apache/avro-rs#61). `tests/interop_fastavro.rs` compares ours with fastavro's.

use std::collections::HashSet;
use std::fmt::Write;

use serde_json::{Map, Value as Json};

use crate::error::SchemaError;

/// What every step of the walk returns; it writes into the `out` it is given.
type Result<T = ()> = std::result::Result<T, SchemaError>;

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The Parsing Canonical Form of the Avro schema `schema_json`.
///
/// Rules of the specification: `[PRIMITIVES]` (a primitive, with or without attributes such as
/// `logicalType`, becomes its bare name), `[FULLNAMES]`, `[STRIP]` (keep only `type`, `name`, `fields`,
/// `symbols`, `items`, `values`, `size`), `[ORDER]`, `[STRINGS]`, `[INTEGERS]`, `[WHITESPACE]`; a named
/// type already written is referred to by its full name.
///
/// ```
/// let pcf = chatlog_schemas::parsing_canonical_form(
///     r#"{"type": "record", "name": "R", "namespace": "a.b", "doc": "x",
///         "fields": [{"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}"#,
/// ).unwrap();
/// assert_eq!(pcf, r#"{"name":"a.b.R","type":"record","fields":[{"name":"t","type":"long"}]}"#);
/// ```
pub fn parsing_canonical_form(schema_json: &str) -> Result<String> {
    let json: Json =
        serde_json::from_str(schema_json).map_err(|e| SchemaError::Parse(e.to_string()))?;
    let mut out = String::with_capacity(schema_json.len());
    Pcf::default().write(&json, None, &mut out)?;
    Ok(out)
}

fn err(msg: impl Into<String>) -> SchemaError {
    SchemaError::Parse(msg.into())
}

fn quoted(out: &mut String, s: &str) {
    // serde_json only escapes `"`, `\` and control characters: exactly the [STRINGS] rule.
    out.push_str(&Json::String(s.to_owned()).to_string());
}

/// Writes `[…]`: `item` writes each of `items`, separated by commas.
fn list(
    out: &mut String,
    items: &[Json],
    mut item: impl FnMut(&mut String, &Json) -> Result,
) -> Result {
    out.push('[');
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        item(out, x)?;
    }
    out.push(']');
    Ok(())
}

/// The array attribute `key` of a schema object, or the error `missing` describes.
fn array_attr<'a>(
    o: &'a Map<String, Json>,
    key: &str,
    missing: impl FnOnce() -> String,
) -> Result<&'a [Json]> {
    o.get(key)
        .and_then(Json::as_array)
        .map(Vec::as_slice)
        .ok_or_else(|| err(missing()))
}

/// Opens `{"name":<name>,"type":` (a named type or a record field); the caller writes the type
/// and the rest.
fn open_named(out: &mut String, name: &str) {
    out.push_str(r#"{"name":"#);
    quoted(out, name);
    out.push_str(r#","type":"#);
}

#[derive(Default)]
struct Pcf {
    defined: HashSet<String>,
}

impl Pcf {
    fn write(&mut self, s: &Json, ns: Option<&str>, out: &mut String) -> Result {
        match s {
            Json::String(name) => self.reference(name, ns, out),
            Json::Array(branches) => list(out, branches, |out, b| self.write(b, ns, out)),
            Json::Object(o) => self.object(o, ns, out),
            other => Err(err(format!("not a schema: {other}"))),
        }
    }

    fn reference(&self, name: &str, ns: Option<&str>, out: &mut String) -> Result {
        if PRIMITIVES.contains(&name) {
            quoted(out, name);
            return Ok(());
        }
        let full = if name.contains('.') {
            name.to_owned()
        } else {
            match ns {
                Some(ns) if self.defined.contains(&format!("{ns}.{name}")) => {
                    format!("{ns}.{name}")
                }
                _ if self.defined.contains(name) => name.to_owned(),
                _ => return Err(err(format!("unknown type {name}"))),
            }
        };
        if !self.defined.contains(&full) {
            return Err(err(format!("unknown type {full}")));
        }
        quoted(out, &full);
        Ok(())
    }

    fn object(&mut self, o: &Map<String, Json>, ns: Option<&str>, out: &mut String) -> Result {
        let ty = o
            .get("type")
            .ok_or_else(|| err("schema object without type"))?;
        let Json::String(ty) = ty else {
            // {"type": {...}} or {"type": [...]}: the nested schema is the schema.
            return self.write(ty, ns, out);
        };
        match ty.as_str() {
            t if PRIMITIVES.contains(&t) => {
                quoted(out, t);
                Ok(())
            }
            "record" | "error" | "enum" | "fixed" => self.named(ty, o, ns, out),
            // The one attribute of each: the schema of its items, of its values.
            "array" | "map" => {
                let key = if ty == "array" { "items" } else { "values" };
                let inner = o
                    .get(key)
                    .ok_or_else(|| err(format!("{ty} without {key}")))?;
                let _ = write!(out, r#"{{"type":"{ty}","{key}":"#);
                self.write(inner, ns, out)?;
                out.push('}');
                Ok(())
            }
            // A reference written as {"type": "Name"}.
            name => self.reference(name, ns, out),
        }
    }

    fn named(
        &mut self,
        ty: &str,
        o: &Map<String, Json>,
        ns: Option<&str>,
        out: &mut String,
    ) -> Result {
        let name = o
            .get("name")
            .and_then(Json::as_str)
            .ok_or_else(|| err(format!("{ty} without name")))?;
        let full = if name.contains('.') {
            name.to_owned()
        } else {
            let own_ns = match o.get("namespace") {
                Some(Json::String(s)) => Some(s.as_str()),
                Some(Json::Null) => None,
                Some(other) => return Err(err(format!("bad namespace {other}"))),
                None => ns,
            };
            match own_ns {
                Some(n) if !n.is_empty() => format!("{n}.{name}"),
                _ => name.to_owned(),
            }
        };
        if !self.defined.insert(full.clone()) {
            return Err(err(format!("type {full} defined twice")));
        }
        let child_ns = full.rsplit_once('.').map(|(n, _)| n.to_owned());
        let child_ns = child_ns.as_deref();
        open_named(out, &full);
        quoted(out, ty);
        match ty {
            "enum" => {
                let symbols = array_attr(o, "symbols", || format!("enum {full} without symbols"))?;
                out.push_str(r#","symbols":"#);
                list(out, symbols, |out, s| {
                    quoted(
                        out,
                        s.as_str().ok_or_else(|| err("enum symbol not a string"))?,
                    );
                    Ok(())
                })?;
            }
            "fixed" => {
                let size = match o.get("size") {
                    Some(Json::Number(n)) => n.as_u64(),
                    Some(Json::String(s)) => s.trim().parse().ok(),
                    _ => None,
                }
                .ok_or_else(|| err(format!("fixed {full} without a valid size")))?;
                let _ = write!(out, r#","size":{size}"#);
            }
            _ => {
                let fields = array_attr(o, "fields", || format!("record {full} without fields"))?;
                out.push_str(r#","fields":"#);
                list(out, fields, |out, f| {
                    let fname = f
                        .get("name")
                        .and_then(Json::as_str)
                        .ok_or_else(|| err(format!("field of {full} without name")))?;
                    let ftype = f
                        .get("type")
                        .ok_or_else(|| err(format!("field {full}.{fname} without type")))?;
                    open_named(out, fname);
                    self.write(ftype, child_ns, out)?;
                    out.push('}');
                    Ok(())
                })?;
            }
        }
        out.push('}');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crc64_avro;

    fn pcf(s: &str) -> String {
        parsing_canonical_form(s).unwrap()
    }

    #[test]
    fn primitives_reduce_even_with_attributes() {
        assert_eq!(pcf(r#""null""#), r#""null""#);
        assert_eq!(pcf(r#"{"type":"int"}"#), r#""int""#);
        assert_eq!(
            pcf(r#"{"type":"long","logicalType":"timestamp-micros"}"#),
            r#""long""#
        );
        assert_eq!(
            pcf(r#"{"type":"bytes","logicalType":"decimal","precision":4}"#),
            r#""bytes""#
        );
        // Spec test vectors (share/test/data/schema-tests.txt).
        assert_eq!(
            crc64_avro(pcf(r#"{"type":"null"}"#).as_bytes()) as i64,
            7195948357588979594
        );
        assert_eq!(
            crc64_avro(pcf(r#" "int" "#).as_bytes()) as i64,
            8247732601305521295
        );
    }

    #[test]
    fn names_order_strip_and_references() {
        let s = r#"{
          "namespace": "x.y", "type": "record", "name": "R", "doc": "d", "aliases": ["Q"],
          "fields": [
            {"name": "e", "doc": "f", "default": "A",
             "type": {"symbols": ["A","B"], "type": "enum", "name": "E", "default": "A"}},
            {"name": "e2", "type": "E"},
            {"name": "e3", "type": {"type": "x.y.E"}},
            {"name": "f", "type": {"type": "fixed", "name": "F", "namespace": "", "size": "016"}},
            {"name": "f2", "type": ["null", "F", {"type": "array", "items": "string"}]},
            {"name": "m", "type": {"values": {"type": "map", "values": "long"}, "type": "map"}},
            {"name": "n", "type": {"type": "record", "name": "a.N", "fields": []}}
          ]}"#;
        assert_eq!(
            pcf(s),
            concat!(
                r#"{"name":"x.y.R","type":"record","fields":["#,
                r#"{"name":"e","type":{"name":"x.y.E","type":"enum","symbols":["A","B"]}},"#,
                r#"{"name":"e2","type":"x.y.E"},"#,
                r#"{"name":"e3","type":"x.y.E"},"#,
                r#"{"name":"f","type":{"name":"F","type":"fixed","size":16}},"#,
                r#"{"name":"f2","type":["null","F",{"type":"array","items":"string"}]},"#,
                r#"{"name":"m","type":{"type":"map","values":{"type":"map","values":"long"}}},"#,
                r#"{"name":"n","type":{"name":"a.N","type":"record","fields":[]}}"#,
                r#"]}"#
            )
        );
    }

    #[test]
    fn bad_schemas_are_errors() {
        for s in [
            "{",
            "42",
            r#"{"type":"record","fields":[]}"#,
            r#"{"type":"array"}"#,
            r#""Undefined""#,
            r#"{"type":"enum","name":"E"}"#,
            r#"{"type":"fixed","name":"F"}"#,
            r#"[{"type":"enum","name":"E","symbols":[]},{"type":"enum","name":"E","symbols":[]}]"#,
        ] {
            assert!(parsing_canonical_form(s).is_err(), "{s}");
        }
    }
}
