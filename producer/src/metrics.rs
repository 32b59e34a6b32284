//! The metrics this library records through the `metrics` facade, so Logic's own exporter shows
//! them. Names follow Prometheus conventions; labels are bounded (never a session id).
//!
//! With `metrics-exporter-prometheus`, set buckets for [`SEND_DURATION`] (e.g. 0.5 ms … 1 s) or it
//! renders as a summary.

/// Sends by result: `ok`, `invalid` (refused before anything was allocated), `error`.
pub const RECORDS: &str = "chatlog_producer_records_total";
/// Mutations by `action` (`recall`, `edit`, `delete_for_everyone`, `delete_for_me`) and `result`:
/// `ok`, `unchanged` (already recalled or deleted: nothing sent), `invalid`, `not_allowed`,
/// `final` (an edit of a recalled or deleted message), `not_found`, `error`.
pub const MUTATIONS: &str = "chatlog_producer_mutations_total";
/// Time of one `send`, validation to Kafka acknowledgement, in seconds.
pub const SEND_DURATION: &str = "chatlog_producer_send_duration_seconds";
/// Seq allocations by path: `fast` (Redis), `segment` (a new CQL segment), `recover` (after Redis
/// lost the session).
pub const SEQ_ALLOCATIONS: &str = chatlog_store::seq::ALLOCATIONS_METRIC;
/// The host clock minus the reference clock (Redis `TIME`) at the last reading, in seconds: sends
/// are refused beyond half of `limits.max_skew` either way.
pub const CLOCK_OFFSET: &str = "chatlog_producer_clock_offset_seconds";

/// Registers the help text and units of every metric with the installed recorder. Called by
/// [`Producer::new`](crate::Producer::new); harmless to call again.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        RECORDS,
        "Messages sent through the chatlog producer, by result."
    );
    describe_counter!(
        MUTATIONS,
        "Recalls, edits and deletes through the chatlog producer, by action and result."
    );
    describe_histogram!(
        SEND_DURATION,
        Unit::Seconds,
        "Time of one send, from validation to Kafka's acknowledgement."
    );
    describe_counter!(SEQ_ALLOCATIONS, "Per-session seq allocations, by path.");
    describe_gauge!(
        CLOCK_OFFSET,
        Unit::Seconds,
        "Host clock minus Redis TIME at the last reading; sends stop beyond half of max_skew."
    );
}
