//! The header names of a DLQ record: why it is there and where it came from. Operators filter on
//! them and the chaos checker reads them, so they are spelled here only.

/// Why the record was refused (`oversize`, `no_key`, `write_failed`, …).
pub const REASON: &str = "chatlog-dlq-reason";
/// The refusal in words, cut to the consumer's detail limit.
pub const DETAIL: &str = "chatlog-dlq-detail";
/// The topic the record came from.
pub const TOPIC: &str = "chatlog-dlq-topic";
/// Its partition.
pub const PARTITION: &str = "chatlog-dlq-partition";
/// Its offset.
pub const OFFSET: &str = "chatlog-dlq-offset";
/// For `write_failed`: the stage that failed (CQL or Redis).
pub const STAGE: &str = "chatlog-dlq-stage";
/// On a truncated copy: the original value's length in bytes.
pub const TRUNCATED: &str = "chatlog-dlq-truncated";
/// On a truncated copy: the SHA-256 of the original value (hex).
pub const SHA256: &str = "chatlog-dlq-sha256";
