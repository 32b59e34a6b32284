//! CRC-64-AVRO (Rabin) schema fingerprints and the single-object header.

/// `EMPTY` of the Avro specification's `fingerprint64` (`0xc15d213aa4d7a795`).
const EMPTY: u64 = 0xc15d_213a_a4d7_a795;

const TABLE: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut fp = i as u64;
        let mut j = 0;
        while j < 8 {
            fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
            j += 1;
        }
        table[i] = fp;
        i += 1;
    }
    table
};

/// The CRC-64-AVRO (64-bit Rabin) fingerprint of `data`, exactly the `fingerprint64` function of
/// the Avro specification ("Schema Fingerprints"). For a schema, `data` is the UTF-8 of its
/// Parsing Canonical Form.
///
/// In a single-object header the value is written as 8 **little-endian** bytes
/// (`u64::to_le_bytes`), as the Java reference implementation and the specification do.
///
/// ```
/// // Test vector from the Avro specification's test data: the canonical form of "null".
/// assert_eq!(chatlog_schemas::crc64_avro(br#""null""#), 7_195_948_357_588_979_594);
/// ```
pub const fn crc64_avro(data: &[u8]) -> u64 {
    let mut fp = EMPTY;
    let mut i = 0;
    while i < data.len() {
        fp = (fp >> 8) ^ TABLE[((fp ^ data[i] as u64) & 0xff) as usize];
        i += 1;
    }
    fp
}

/// The two marker bytes that start every single-object encoded message.
pub const MAGIC: [u8; 2] = [0xC3, 0x01];

/// Length of the single-object header: 2 marker bytes + 8 fingerprint bytes.
pub const HEADER_LEN: usize = 10;

/// The single-object header for a writer schema fingerprint: `C3 01` + `fingerprint` little-endian.
pub const fn header(fingerprint: u64) -> [u8; HEADER_LEN] {
    let fp = fingerprint.to_le_bytes();
    [
        MAGIC[0], MAGIC[1], fp[0], fp[1], fp[2], fp[3], fp[4], fp[5], fp[6], fp[7],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_vectors() {
        // From the Avro repository, share/test/data/schema-tests.txt (canonical form → fingerprint).
        assert_eq!(crc64_avro(br#""null""#) as i64, 7195948357588979594);
        assert_eq!(crc64_avro(br#""int""#) as i64, 8247732601305521295);
        assert_eq!(crc64_avro(b""), EMPTY);
    }

    #[test]
    fn matches_apache_avro_rabin_digest_byte_order() {
        // apache-avro's Rabin digest returns the little-endian bytes; ours must agree.
        let schema = apache_avro::Schema::parse_str(r#""string""#).unwrap();
        let digest = schema.fingerprint::<apache_avro::rabin::Rabin>();
        assert_eq!(
            digest.bytes,
            crc64_avro(schema.canonical_form().as_bytes())
                .to_le_bytes()
                .to_vec()
        );
    }

    #[test]
    fn header_layout() {
        let h = header(0x0102_0304_0506_0708);
        assert_eq!(h, [0xC3, 0x01, 8, 7, 6, 5, 4, 3, 2, 1]);
    }
}
