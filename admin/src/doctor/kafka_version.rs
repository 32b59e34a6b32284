//! The Kafka cluster's version for `doctor`'s `kafka` line.
//!
//! librdkafka does not expose the version of the brokers it talks to, so the doctor asks one
//! bootstrap broker itself: an ApiVersions request (api key 18, version 3) over a plain TCP
//! connection, and from the answer the cluster's finalized `metadata.version` feature level,
//! named after the release that introduced it (`4.1-IV1`). That level is what the cluster runs
//! at — an operator raises it after upgrading every broker (`kafka-features.sh upgrade`) — so it is
//! a lower bound of the brokers' software, which is what matters to a client: the features the
//! cluster has switched on.
//!
//! Only a PLAINTEXT listener is asked: speaking TLS or SASL here would duplicate librdkafka's
//! security settings for one line of output, so with those the version is shown as unknown (not a
//! failure). What the broker sends is read under the doctor's timeout and within
//! [`MAX_RESPONSE_BYTES`], every length checked against the bytes that remain before it is used.

use std::fmt;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest ApiVersions response read. A Kafka 4.1 broker's is about 600 bytes (some 90 APIs
/// at 7 bytes each, a few features); 64 KiB leaves room for many more while bounding what a
/// peer that is not Kafka (or a broken one) can make us allocate.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

const API_VERSIONS_KEY: i16 = 18;
/// The first version whose response carries the finalized features (and the oldest flexible one).
const API_VERSIONS_VERSION: i16 = 3;
/// One request per connection, so any fixed id tells a stray answer from ours.
const CORRELATION_ID: i32 = 0x6368_6c67;
/// The client id and software name the broker logs; it must match Kafka's
/// `[a-zA-Z0-9](?:[a-zA-Z0-9\-.]*[a-zA-Z0-9])?` or the broker answers INVALID_REQUEST.
const CLIENT_NAME: &str = "chatlog-doctor";
/// Tag of the FinalizedFeatures field in ApiVersions responses v3+.
const FINALIZED_FEATURES_TAG: u32 = 2;
const METADATA_VERSION_FEATURE: &[u8] = b"metadata.version";
/// Kafka's UNSUPPORTED_VERSION error code.
const UNSUPPORTED_VERSION: i16 = 35;
/// librdkafka's port for a bootstrap server given without one.
const DEFAULT_PORT: u16 = 9092;

/// The release names of `metadata.version` feature levels, from [`FIRST_LEVEL`] on: the table of
/// apache/kafka's `MetadataVersion` (server-common) as of release 4.1.1, where 27 (`4.1-IV1`) is
/// the newest production level and 28–29 (4.2's) were still in development. Level 4 (`3.3-IV0`)
/// is the first that a cluster records as `metadata.version`. A level past the table is shown as
/// its number.
const RELEASE_NAMES: [&str; 26] = [
    "3.3-IV0", "3.3-IV1", "3.3-IV2", "3.3-IV3", // 4..=7
    "3.4-IV0", // 8
    "3.5-IV0", "3.5-IV1", "3.5-IV2", // 9..=11
    "3.6-IV0", "3.6-IV1", "3.6-IV2", // 12..=14
    "3.7-IV0", "3.7-IV1", "3.7-IV2", "3.7-IV3", "3.7-IV4", // 15..=19
    "3.8-IV0", // 20
    "3.9-IV0", // 21
    "4.0-IV0", "4.0-IV1", "4.0-IV2", "4.0-IV3", // 22..=25
    "4.1-IV0", "4.1-IV1", // 26..=27
    "4.2-IV0", "4.2-IV1", // 28..=29
];
/// The feature level of [`RELEASE_NAMES`]`[0]`.
const FIRST_LEVEL: i16 = 4;

/// The release name of `metadata.version` feature level `level` (`27` → `4.1-IV1`), if known.
pub fn release_name(level: i16) -> Option<&'static str> {
    let index = usize::try_from(level.checked_sub(FIRST_LEVEL)?).ok()?;
    RELEASE_NAMES.get(index).copied()
}

/// Why the version could not be read from the broker.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No bootstrap server could be connected to.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// The last address tried.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The connection failed while sending or receiving.
    #[error("{address}: {source}")]
    Io {
        /// The broker's address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// `kafka.bootstrap_servers` names no server.
    #[error("no bootstrap server configured")]
    NoBootstrap,
    /// The response is not what ApiVersions v3 answers.
    #[error("{address}: {source}")]
    Response {
        /// The broker's address.
        address: String,
        /// What is wrong with it.
        source: ResponseError,
    },
}

/// What is wrong with an ApiVersions response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// The size prefix announces more than [`MAX_RESPONSE_BYTES`] (not read, nothing allocated).
    #[error(
        "the response announces {0} bytes, more than the {MAX_RESPONSE_BYTES} accepted: is this a Kafka PLAINTEXT listener?"
    )]
    TooLarge(i64),
    /// The size prefix is negative or too small for a response header.
    #[error(
        "the response announces an impossible size of {0} bytes: is this a Kafka PLAINTEXT listener?"
    )]
    BadSize(i64),
    /// A field goes past the end of the response.
    #[error("truncated response: {0} goes past its end")]
    Truncated(&'static str),
    /// A length (of an array, a string, a tagged field) is larger than the bytes that remain.
    #[error(
        "malformed response: {what} announces {length} entries or bytes, only {remaining} bytes remain"
    )]
    LengthTooLarge {
        /// Which length.
        what: &'static str,
        /// What it says.
        length: u64,
        /// The bytes left after it.
        remaining: usize,
    },
    /// A varint longer than 32 bits.
    #[error("malformed response: {0} is not a 32-bit varint")]
    Varint(&'static str),
    /// A required string or array sent as null.
    #[error("malformed response: {0} is null")]
    Null(&'static str),
    /// The response answers another request.
    #[error("the response carries correlation id {got}, not {sent}")]
    Correlation {
        /// The id in the response.
        got: i32,
        /// The id sent.
        sent: i32,
    },
    /// The broker answered with an error code.
    #[error("the broker answered error code {0}{hint}", hint = error_hint(*.0))]
    Broker(i16),
}

/// What an error code of the broker's answer means, where it has a likely cause.
fn error_hint(code: i16) -> &'static str {
    if code == UNSUPPORTED_VERSION {
        " (UNSUPPORTED_VERSION: ApiVersions v3 needs Kafka 2.4 or newer)"
    } else {
        ""
    }
}

/// The cluster's finalized `metadata.version`, as the `kafka` line shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataVersion {
    /// Finalized at this feature level.
    Level(i16),
    /// The broker finalizes no `metadata.version` (a ZooKeeper-mode cluster, or one before 3.3).
    NotFinalized,
}

impl fmt::Display for MetadataVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MetadataVersion::Level(level) => match release_name(level) {
                Some(name) => write!(f, "metadata.version {name}"),
                None => write!(
                    f,
                    "metadata.version level {level} (not in this build's table)"
                ),
            },
            MetadataVersion::NotFinalized => f.write_str(
                "metadata.version not finalized (a ZooKeeper-mode cluster, or older than 3.3)",
            ),
        }
    }
}

/// The `host:port` addresses of `bootstrap` (`kafka.bootstrap_servers`: comma-separated, each
/// maybe with a `protocol://` prefix and without a port, as librdkafka accepts them).
pub fn bootstrap_addresses(bootstrap: &str) -> Vec<String> {
    bootstrap
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let s = s.split_once("://").map_or(s, |(_, rest)| rest);
            // A port is what follows the last colon, unless that colon is inside `[v6]`.
            let has_port = s
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
                && !s.ends_with(']');
            if has_port {
                s.to_owned()
            } else {
                format!("{s}:{DEFAULT_PORT}")
            }
        })
        .collect()
}

/// Asks the first bootstrap server that accepts a connection (`bootstrap` as configured) for
/// its ApiVersions and returns the finalized `metadata.version`. Not bounded in time by itself:
/// the caller wraps it in the doctor's timeout.
pub async fn probe(bootstrap: &str) -> Result<MetadataVersion, ProbeError> {
    let mut last = None;
    for address in bootstrap_addresses(bootstrap) {
        match TcpStream::connect(address.as_str()).await {
            Ok(stream) => return exchange(stream, &address).await,
            Err(source) => last = Some(ProbeError::Connect { address, source }),
        }
    }
    Err(last.unwrap_or(ProbeError::NoBootstrap))
}

async fn exchange(mut stream: TcpStream, address: &str) -> Result<MetadataVersion, ProbeError> {
    let io = |source| ProbeError::Io {
        address: address.to_owned(),
        source,
    };
    stream.write_all(&request()).await.map_err(io)?;
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).await.map_err(io)?;
    let size = frame_size(i32::from_be_bytes(size)).map_err(|source| ProbeError::Response {
        address: address.to_owned(),
        source,
    })?;
    // Sized by the prefix, which `frame_size` capped at MAX_RESPONSE_BYTES.
    let mut frame = vec![0u8; size];
    stream.read_exact(&mut frame).await.map_err(io)?;
    parse_response(&frame, CORRELATION_ID).map_err(|source| ProbeError::Response {
        address: address.to_owned(),
        source,
    })
}

/// ApiVersions v3 with its size prefix: request header v2 (api key, version, correlation id, the
/// client id as a classic int16-length string — never compact, so that any broker can read it —
/// and no tagged fields), then the body (client software name and version as compact strings,
/// no tagged fields).
fn request() -> Vec<u8> {
    let version = env!("CARGO_PKG_VERSION");
    let mut body = Vec::with_capacity(64);
    body.extend_from_slice(&API_VERSIONS_KEY.to_be_bytes());
    body.extend_from_slice(&API_VERSIONS_VERSION.to_be_bytes());
    body.extend_from_slice(&CORRELATION_ID.to_be_bytes());
    body.extend_from_slice(&(CLIENT_NAME.len() as i16).to_be_bytes());
    body.extend_from_slice(CLIENT_NAME.as_bytes());
    body.push(0); // header tagged fields
    for s in [CLIENT_NAME, version] {
        // Compact string: length + 1 as an unsigned varint; both are far below 127 bytes.
        body.push(s.len() as u8 + 1);
        body.extend_from_slice(s.as_bytes());
    }
    body.push(0); // body tagged fields
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as i32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// The response's size prefix as a length to read: at least the 4-byte header, at most
/// [`MAX_RESPONSE_BYTES`].
pub fn frame_size(size: i32) -> Result<usize, ResponseError> {
    match usize::try_from(size) {
        Err(_) => Err(ResponseError::BadSize(size.into())),
        Ok(n) if n < 4 => Err(ResponseError::BadSize(size.into())),
        Ok(n) if n > MAX_RESPONSE_BYTES => Err(ResponseError::TooLarge(size.into())),
        Ok(n) => Ok(n),
    }
}

/// Parses an ApiVersions v3 response without its size prefix: response header v0 (the
/// correlation id: ApiVersions never uses the flexible header, so that a client can read an
/// answer to a version the broker does not support), then error code, api keys (compact array),
/// throttle time and the tagged fields, of which FinalizedFeatures (tag 2) gives
/// `metadata.version`'s finalized max level.
pub fn parse_response(frame: &[u8], correlation_id: i32) -> Result<MetadataVersion, ResponseError> {
    let mut r = Reader { buf: frame };
    let got = r.i32("the correlation id")?;
    if got != correlation_id {
        return Err(ResponseError::Correlation {
            got,
            sent: correlation_id,
        });
    }
    // First in every version, so an error (UNSUPPORTED_VERSION answered in v0's layout) is read
    // before anything that depends on the version.
    let error = r.i16("the error code")?;
    if error != 0 {
        return Err(ResponseError::Broker(error));
    }
    // Each api key: key, min and max version (int16 each) and its tagged fields (>= 1 byte).
    let keys = r.compact_len("the api keys array", 7)?;
    for _ in 0..keys {
        r.take(6, "an api key entry")?;
        r.skip_tagged_fields("an api key's tagged fields")?;
    }
    r.i32("the throttle time")?;
    let mut version = MetadataVersion::NotFinalized;
    let fields = r.uvarint("the number of tagged fields")?;
    // Each tagged field: its tag and its size (>= 1 byte each).
    r.check_count("the number of tagged fields", fields, 2)?;
    for _ in 0..fields {
        let tag = r.uvarint("a tagged field's tag")?;
        let size = r.uvarint("a tagged field's size")?;
        let data = r.take_len(size, "a tagged field")?;
        if tag == FINALIZED_FEATURES_TAG
            && let Some(level) = finalized_metadata_version(data)?
        {
            version = MetadataVersion::Level(level);
        }
    }
    Ok(version)
}

/// FinalizedFeatures: a compact array of {name (compact string), max version level (int16), min
/// version level (int16), tagged fields}; `metadata.version`'s max level, if listed.
fn finalized_metadata_version(data: &[u8]) -> Result<Option<i16>, ResponseError> {
    let mut r = Reader { buf: data };
    // Each entry: name (>= 1 byte), two int16, tagged fields (>= 1 byte).
    let features = r.compact_len("the finalized features array", 6)?;
    let mut level = None;
    for _ in 0..features {
        let name = r.compact_bytes("a finalized feature's name")?;
        let max = r.i16("a finalized feature's max version level")?;
        r.i16("a finalized feature's min version level")?;
        r.skip_tagged_fields("a finalized feature's tagged fields")?;
        if name == METADATA_VERSION_FEATURE {
            level = Some(max);
        }
    }
    Ok(level)
}

/// A cursor over a received buffer: every read checks what remains, none allocates.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ResponseError> {
        if n > self.buf.len() {
            return Err(ResponseError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// `length` bytes, refused as a too-large length (not a truncation) when fewer remain.
    fn take_len(&mut self, length: u32, what: &'static str) -> Result<&'a [u8], ResponseError> {
        self.check_count(what, length, 1)?;
        self.take(length as usize, what)
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, ResponseError> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, ResponseError> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An unsigned varint of at most 32 bits (5 bytes, the last holding 4 bits).
    fn uvarint(&mut self, what: &'static str) -> Result<u32, ResponseError> {
        let mut value: u32 = 0;
        for i in 0..5 {
            let byte = self.take(1, what)?[0];
            if i == 4 && byte > 0x0f {
                return Err(ResponseError::Varint(what));
            }
            value |= u32::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ResponseError::Varint(what))
    }

    /// Fails unless `count` items of at least `min_size` bytes each fit in what remains.
    fn check_count(
        &self,
        what: &'static str,
        count: u32,
        min_size: usize,
    ) -> Result<(), ResponseError> {
        let needed = (count as usize).saturating_mul(min_size);
        if needed > self.buf.len() {
            return Err(ResponseError::LengthTooLarge {
                what,
                length: count.into(),
                remaining: self.buf.len(),
            });
        }
        Ok(())
    }

    /// A compact array's length (N + 1 as a varint; 0, null, is refused), checked against what
    /// remains at `min_size` bytes per entry.
    fn compact_len(&mut self, what: &'static str, min_size: usize) -> Result<u32, ResponseError> {
        let n = self
            .uvarint(what)?
            .checked_sub(1)
            .ok_or(ResponseError::Null(what))?;
        self.check_count(what, n, min_size)?;
        Ok(n)
    }

    /// A compact string's bytes (not null).
    fn compact_bytes(&mut self, what: &'static str) -> Result<&'a [u8], ResponseError> {
        let n = self
            .uvarint(what)?
            .checked_sub(1)
            .ok_or(ResponseError::Null(what))?;
        self.take_len(n, what)
    }

    fn skip_tagged_fields(&mut self, what: &'static str) -> Result<(), ResponseError> {
        let fields = self.uvarint(what)?;
        self.check_count(what, fields, 2)?;
        for _ in 0..fields {
            self.uvarint(what)?;
            let size = self.uvarint(what)?;
            self.take_len(size, what)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uvarint(out: &mut Vec<u8>, mut v: u32) {
        while v >= 0x80 {
            out.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn compact_str(out: &mut Vec<u8>, s: &str) {
        uvarint(out, s.len() as u32 + 1);
        out.extend_from_slice(s.as_bytes());
    }

    /// Finalized features as a tagged field's data.
    fn finalized(features: &[(&str, i16, i16)]) -> Vec<u8> {
        let mut d = Vec::new();
        uvarint(&mut d, features.len() as u32 + 1);
        for (name, max, min) in features {
            compact_str(&mut d, name);
            d.extend_from_slice(&max.to_be_bytes());
            d.extend_from_slice(&min.to_be_bytes());
            d.push(0);
        }
        d
    }

    /// A response as a 4.1 broker shapes it: correlation id, error 0, three api keys (one with a
    /// tagged field of its own), throttle time, then SupportedFeatures (tag 0), the features'
    /// epoch (tag 1) and `finalized` (tag 2) unless `None`.
    fn response(correlation: i32, finalized_data: Option<Vec<u8>>) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&correlation.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        uvarint(&mut b, 3 + 1);
        for (key, min, max, tagged) in [
            (0i16, 0i16, 12i16, false),
            (1, 4, 17, true),
            (18, 0, 4, false),
        ] {
            for v in [key, min, max] {
                b.extend_from_slice(&v.to_be_bytes());
            }
            if tagged {
                b.extend_from_slice(&[1, 7, 2, 0xaa, 0xbb]);
            } else {
                b.push(0);
            }
        }
        b.extend_from_slice(&0i32.to_be_bytes());
        let supported = finalized(&[("metadata.version", 29, 7), ("kraft.version", 1, 0)]);
        let epoch = 1234i64.to_be_bytes().to_vec();
        let mut tags = vec![(0u32, supported), (1, epoch)];
        if let Some(data) = finalized_data {
            tags.push((2, data));
        }
        uvarint(&mut b, tags.len() as u32);
        for (tag, data) in tags {
            uvarint(&mut b, tag);
            uvarint(&mut b, data.len() as u32);
            b.extend_from_slice(&data);
        }
        b
    }

    fn healthy() -> Vec<u8> {
        response(
            CORRELATION_ID,
            Some(finalized(&[
                ("group.version", 1, 1),
                ("metadata.version", 27, 27),
                ("kraft.version", 1, 1),
            ])),
        )
    }

    #[test]
    fn the_finalized_metadata_version_is_read_and_named() {
        let v = parse_response(&healthy(), CORRELATION_ID).unwrap();
        assert_eq!(v, MetadataVersion::Level(27));
        assert_eq!(v.to_string(), "metadata.version 4.1-IV1");
        // Without FinalizedFeatures, or without metadata.version in them.
        let none = response(CORRELATION_ID, None);
        assert_eq!(
            parse_response(&none, CORRELATION_ID),
            Ok(MetadataVersion::NotFinalized)
        );
        let other = response(CORRELATION_ID, Some(finalized(&[("kraft.version", 1, 1)])));
        assert_eq!(
            parse_response(&other, CORRELATION_ID),
            Ok(MetadataVersion::NotFinalized)
        );
        // A level past the table is shown as its number.
        let newer = response(
            CORRELATION_ID,
            Some(finalized(&[("metadata.version", 40, 40)])),
        );
        let v = parse_response(&newer, CORRELATION_ID).unwrap();
        assert_eq!(
            v.to_string(),
            "metadata.version level 40 (not in this build's table)"
        );
    }

    #[test]
    fn release_names_follow_kafkas_table() {
        assert_eq!(release_name(4), Some("3.3-IV0"));
        assert_eq!(release_name(7), Some("3.3-IV3"));
        assert_eq!(release_name(8), Some("3.4-IV0"));
        assert_eq!(release_name(19), Some("3.7-IV4"));
        assert_eq!(release_name(21), Some("3.9-IV0"));
        assert_eq!(release_name(22), Some("4.0-IV0"));
        assert_eq!(release_name(25), Some("4.0-IV3"));
        assert_eq!(release_name(27), Some("4.1-IV1"));
        assert_eq!(release_name(29), Some("4.2-IV1"));
        for unknown in [i16::MIN, -1, 0, 3, 30, i16::MAX] {
            assert_eq!(release_name(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let whole = healthy();
        for end in 0..whole.len() {
            let cut = &whole[..end];
            assert!(
                parse_response(cut, CORRELATION_ID).is_err(),
                "a response cut to {end} of {} bytes parsed",
                whole.len()
            );
        }
        assert!(matches!(
            parse_response(&whole[..5], CORRELATION_ID),
            Err(ResponseError::Truncated("the error code"))
        ));
    }

    #[test]
    fn lengths_larger_than_what_remains_are_errors() {
        // The api keys array announces 2^32 - 2 entries.
        let mut huge = Vec::new();
        huge.extend_from_slice(&CORRELATION_ID.to_be_bytes());
        huge.extend_from_slice(&0i16.to_be_bytes());
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        huge.extend_from_slice(&[0; 16]);
        assert!(matches!(
            parse_response(&huge, CORRELATION_ID),
            Err(ResponseError::LengthTooLarge {
                what: "the api keys array",
                ..
            })
        ));
        // A feature name longer than the tagged field holding it.
        let mut data = Vec::new();
        uvarint(&mut data, 2);
        uvarint(&mut data, 1000);
        data.extend_from_slice(b"metadata.version");
        data.extend_from_slice(&[0, 27, 0, 27, 0]);
        let long_name = response(CORRELATION_ID, Some(data));
        assert!(matches!(
            parse_response(&long_name, CORRELATION_ID),
            Err(ResponseError::LengthTooLarge {
                what: "a finalized feature's name",
                ..
            })
        ));
        // A tagged field larger than the response.
        let mut b = Vec::new();
        b.extend_from_slice(&CORRELATION_ID.to_be_bytes());
        b.extend_from_slice(&[0, 0, 1, 0, 0, 0, 0, 1, 2]);
        uvarint(&mut b, 60_000);
        b.extend_from_slice(&[0; 10]);
        assert!(matches!(
            parse_response(&b, CORRELATION_ID),
            Err(ResponseError::LengthTooLarge {
                what: "a tagged field",
                ..
            })
        ));
        // A varint of more than 32 bits.
        let mut long = Vec::new();
        long.extend_from_slice(&CORRELATION_ID.to_be_bytes());
        long.extend_from_slice(&[0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(
            parse_response(&long, CORRELATION_ID),
            Err(ResponseError::Varint("the api keys array"))
        );
        // A null array.
        let mut null = Vec::new();
        null.extend_from_slice(&CORRELATION_ID.to_be_bytes());
        null.extend_from_slice(&[0, 0, 0]);
        assert_eq!(
            parse_response(&null, CORRELATION_ID),
            Err(ResponseError::Null("the api keys array"))
        );
    }

    #[test]
    fn errors_and_stray_answers_are_refused() {
        assert_eq!(
            parse_response(&healthy(), CORRELATION_ID + 1),
            Err(ResponseError::Correlation {
                got: CORRELATION_ID,
                sent: CORRELATION_ID + 1
            })
        );
        // UNSUPPORTED_VERSION, answered in v0's layout: the error code decides before the rest.
        let mut old = Vec::new();
        old.extend_from_slice(&CORRELATION_ID.to_be_bytes());
        old.extend_from_slice(&35i16.to_be_bytes());
        old.extend_from_slice(&[0, 0, 0, 1, 0, 18, 0, 0, 0, 2]);
        let err = parse_response(&old, CORRELATION_ID).unwrap_err();
        assert_eq!(err, ResponseError::Broker(35));
        assert!(err.to_string().contains("Kafka 2.4"), "{err}");
    }

    #[test]
    fn the_size_prefix_is_checked_before_anything_is_allocated() {
        assert_eq!(frame_size(4), Ok(4));
        assert_eq!(frame_size(65_536), Ok(65_536));
        assert_eq!(frame_size(65_537), Err(ResponseError::TooLarge(65_537)));
        assert_eq!(
            frame_size(i32::MAX),
            Err(ResponseError::TooLarge(i32::MAX.into()))
        );
        assert_eq!(frame_size(3), Err(ResponseError::BadSize(3)));
        assert_eq!(frame_size(-1), Err(ResponseError::BadSize(-1)));
        // "HTTP" read as a size, as from a peer that is not Kafka.
        assert!(frame_size(i32::from_be_bytes(*b"HTTP")).is_err());
    }

    #[test]
    fn bootstrap_servers_become_addresses() {
        assert_eq!(
            bootstrap_addresses(" PLAINTEXT://kafka-1:9093, kafka-2 ,,[::1]:9094,[::1]"),
            ["kafka-1:9093", "kafka-2:9092", "[::1]:9094", "[::1]:9092"]
        );
        assert!(bootstrap_addresses(" , ").is_empty());
    }

    /// The request as sent, checked against the layout of a request header v2 and body v3.
    #[test]
    fn the_request_is_apiversions_v3() {
        let r = request();
        let size = i32::from_be_bytes([r[0], r[1], r[2], r[3]]);
        assert_eq!(size as usize, r.len() - 4);
        assert_eq!(&r[4..8], &[0, 18, 0, 3]);
        assert_eq!(&r[8..12], &CORRELATION_ID.to_be_bytes());
        assert_eq!(&r[12..14], &(CLIENT_NAME.len() as i16).to_be_bytes());
        let after_id = 14 + CLIENT_NAME.len();
        assert_eq!(&r[14..after_id], CLIENT_NAME.as_bytes());
        assert_eq!(r[after_id], 0);
        assert_eq!(r[after_id + 1] as usize, CLIENT_NAME.len() + 1);
        assert_eq!(*r.last().unwrap(), 0);
    }

    /// Against a fake broker on loopback: the answer is read, and a size prefix beyond the cap is
    /// refused without reading on.
    #[tokio::test]
    async fn the_probe_reads_a_broker_answer_and_refuses_an_oversized_one() {
        async fn serve(answer: Vec<u8>) -> String {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap().to_string();
            tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut size = [0u8; 4];
                s.read_exact(&mut size).await.unwrap();
                let mut req = vec![0u8; i32::from_be_bytes(size) as usize];
                s.read_exact(&mut req).await.unwrap();
                s.write_all(&answer).await.unwrap();
                // Keep the connection open until the client is done.
                let _ = s.read(&mut [0u8; 1]).await;
            });
            address
        }
        let body = healthy();
        let mut framed = (body.len() as i32).to_be_bytes().to_vec();
        framed.extend_from_slice(&body);
        let address = serve(framed).await;
        let v = probe(&format!("PLAINTEXT://{address}")).await.unwrap();
        assert_eq!(v, MetadataVersion::Level(27));

        let address = serve(1_000_000_000i32.to_be_bytes().to_vec()).await;
        let err = probe(&address).await.unwrap_err();
        assert!(
            matches!(
                err,
                ProbeError::Response {
                    source: ResponseError::TooLarge(1_000_000_000),
                    ..
                }
            ),
            "{err}"
        );
    }
}
