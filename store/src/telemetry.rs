//! Every metric name this crate records, in one place (OPERATIONS.md lists what each means).
//! Labels are bounded: an operation, a source, a reason, a repository — never a session or user.

/// Seq allocations, by `path` (`fast`, `segment`, `recovery`, …).
pub const SEQ_ALLOCATIONS: &str = "chatlog_seq_allocations_total";

/// History requests, by `op` and the `source` that answered.
pub const HISTORY_REQUESTS: &str = "chatlog_history_requests_total";
/// History request latency, by `op`.
pub const HISTORY_REQUEST_DURATION: &str = "chatlog_history_request_duration_seconds";
/// History requests that joined an identical one in flight.
pub const HISTORY_COALESCED: &str = "chatlog_history_coalesced_total";
/// History requests that read CQL.
pub const HISTORY_DB_READS: &str = "chatlog_history_db_reads_total";
/// CQL queries history ran.
pub const HISTORY_DB_QUERIES: &str = "chatlog_history_db_queries_total";
/// Windows history could not use, by `reason` (`member`, `redis`, `epoch`).
pub const HISTORY_WINDOW_ERRORS: &str = "chatlog_history_window_errors_total";
/// Rows found in CQL inside a window's holes.
pub const HISTORY_WINDOW_HOLE_ROWS: &str = "chatlog_history_window_hole_rows_total";
