//! A bounds check of an Avro binary datum against its writer schema, run before apache-avro
//! decodes bytes written under a schema other than the current one.
//!
//! apache-avro trusts block counts and lengths up to its global allocation limit (512 MiB by
//! default) and reserves memory for them up front, so a few crafted bytes could make it try to
//! allocate gigabytes (an abort, not an error). This walk reads every varint, length and count,
//! rejects any count or length the remaining input cannot back, checks enum and union indexes, and
//! requires the datum to end exactly at the end of the input. After it passes, apache-avro only
//! ever sees sizes bounded by the input length.
//!
//! The walk also caps the *total* number of array and map items in a datum at its length in
//! bytes. Each block's count is checked against the remaining input, but items of zero bytes
//! (`null`, an empty record, a zero-size fixed) take no input: block after block of them would
//! let a 1 MiB datum claim ~10^11 items in all (the walk quadratic, apache-avro's `Vec`s
//! unbounded). With the cap both are linear in the input.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::schema::{DecimalSchema, EnumSchema, FixedSchema, RecordSchema};

use crate::error::DecodeError;
use crate::wire::Cursor;

/// Maximum nesting depth of a datum (guards the recursion on recursive schemas).
const MAX_DEPTH: usize = 64;

/// Named types of a schema by full name, to follow `Schema::Ref`.
#[derive(Debug, Default)]
pub(crate) struct Names(HashMap<String, Schema>);

impl Names {
    /// Collects every named type (record, enum, fixed) defined in `schema`.
    pub(crate) fn collect(schema: &Schema) -> Names {
        let mut names = Names::default();
        names.walk(schema);
        names
    }

    fn walk(&mut self, schema: &Schema) {
        match schema {
            Schema::Record(r) => {
                self.0.insert(r.name.fullname(None), schema.clone());
                for f in &r.fields {
                    self.walk(&f.schema);
                }
            }
            Schema::Enum(EnumSchema { name, .. }) | Schema::Fixed(FixedSchema { name, .. }) => {
                self.0.insert(name.fullname(None), schema.clone());
            }
            Schema::Array(a) => self.walk(&a.items),
            Schema::Map(m) => self.walk(&m.types),
            Schema::Union(u) => {
                for v in u.variants() {
                    self.walk(v);
                }
            }
            Schema::Decimal(DecimalSchema { inner, .. }) => self.walk(inner),
            _ => {}
        }
    }
}

/// Checks that `datum` is exactly one well-formed datum of `schema`.
pub(crate) fn check_datum(schema: &Schema, names: &Names, datum: &[u8]) -> Result<(), DecodeError> {
    let mut c = Cursor::new(datum);
    let mut items = datum.len();
    skip(schema, names, &mut c, &mut items, 0)?;
    c.finish()
}

/// Takes `n` items of an array or map block from `budget` (see the module docs).
fn take_items(budget: &mut usize, n: usize) -> Result<(), DecodeError> {
    *budget = budget.checked_sub(n).ok_or_else(|| {
        malformed("more array/map items in the datum than it has bytes (zero-byte items)")
    })?;
    Ok(())
}

/// Skips the blocks of an array or map: each block's count is taken from `items` (the budget)
/// before `item` skips each of its items.
fn skip_blocks(
    c: &mut Cursor<'_>,
    items: &mut usize,
    mut item: impl FnMut(&mut Cursor<'_>, &mut usize) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    c.blocks(|c, n| {
        take_items(items, n)?;
        (0..n).try_for_each(|_| item(c, items))
    })
}

fn malformed(msg: impl Into<String>) -> DecodeError {
    DecodeError::Malformed(msg.into())
}

fn skip(
    schema: &Schema,
    names: &Names,
    c: &mut Cursor<'_>,
    items: &mut usize,
    depth: usize,
) -> Result<(), DecodeError> {
    if depth > MAX_DEPTH {
        return Err(malformed("datum nested too deeply"));
    }
    match schema {
        Schema::Null => {}
        Schema::Boolean => match c.byte()? {
            0 | 1 => {}
            b => return Err(malformed(format!("invalid boolean byte {b:#04x}"))),
        },
        Schema::Int | Schema::Date | Schema::TimeMillis => {
            c.int()?;
        }
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => {
            c.long()?;
        }
        Schema::Float => {
            c.take(4)?;
        }
        Schema::Double => {
            c.take(8)?;
        }
        Schema::Bytes | Schema::String | Schema::BigDecimal | Schema::Uuid => {
            c.bytes()?;
        }
        Schema::Decimal(DecimalSchema { inner, .. }) => skip(inner, names, c, items, depth + 1)?,
        Schema::Fixed(FixedSchema { size, .. }) => {
            c.take(*size)?;
        }
        Schema::Duration => {
            c.take(12)?;
        }
        Schema::Enum(EnumSchema { name, symbols, .. }) => {
            let i = c.int()?;
            if usize::try_from(i).map_or(true, |i| i >= symbols.len()) {
                return Err(malformed(format!(
                    "enum {} index {i} out of range",
                    name.fullname(None)
                )));
            }
        }
        Schema::Union(u) => {
            let i = c.long()?;
            let variant = usize::try_from(i)
                .ok()
                .and_then(|i| u.variants().get(i))
                .ok_or_else(|| malformed(format!("union index {i} out of range")))?;
            skip(variant, names, c, items, depth + 1)?;
        }
        Schema::Record(RecordSchema { fields, .. }) => {
            for f in fields {
                skip(&f.schema, names, c, items, depth + 1)?;
            }
        }
        Schema::Array(a) => skip_blocks(c, items, |c, items| {
            skip(&a.items, names, c, items, depth + 1)
        })?,
        Schema::Map(m) => skip_blocks(c, items, |c, items| {
            c.bytes()?; // the key
            skip(&m.types, names, c, items, depth + 1)
        })?,
        Schema::Ref { name } => {
            let full = name.fullname(None);
            let target = names
                .0
                .get(&full)
                .ok_or_else(|| malformed(format!("unresolved schema reference {full}")))?;
            skip(target, names, c, items, depth + 1)?;
        }
    }
    Ok(())
}
