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

/// Cache lookups, by `repo` and `result` (`hit`, `miss`).
pub const CACHE_REQUESTS: &str = "chatlog_cache_requests_total";
/// Database reads of cache misses (one per key per loader), by `repo`.
pub const CACHE_LOADS: &str = "chatlog_cache_loads_total";
/// Pauses waiting for another process's loader, by `repo`.
pub const CACHE_LOCK_WAITS: &str = "chatlog_cache_lock_waits_total";
/// Reads served by the database because the cache could not be used (Redis unreachable, a
/// loader too slow, marks lost), by `repo`.
pub const CACHE_DEGRADED_READS: &str = "chatlog_cache_degraded_reads_total";
/// Fills refused because a write marked the entry after its loader locked it, by `repo`.
pub const CACHE_FILLS_REFUSED: &str = "chatlog_cache_fills_refused_total";
/// Deletion marks Redis did not take (kept and retried), by `repo`.
pub const CACHE_MARKS_FAILED: &str = "chatlog_cache_marks_failed_total";
/// Deletion marks kept for retry now, by `repo`.
pub const CACHE_PENDING_MARKS: &str = "chatlog_cache_pending_marks";
/// Cache misses that joined a load of the same key in flight in this process.
pub const CACHE_COALESCED: &str = "chatlog_cache_coalesced_total";
/// Cache misses that joined a load after its value was asked for, and loaded again on their own
/// (the value might predate a write that returned before they began), by `repo`.
pub const CACHE_LATE_JOINS: &str = "chatlog_cache_late_joins_total";

/// Member pages read from CQL because the group has more members than the cache holds.
pub const REPO_MEMBERS_UNCACHED_PAGES: &str = "chatlog_repo_members_uncached_pages_total";

/// In-place updates of cached entries (`repo`; `result`: `in_place`, or `marked` when the entry
/// was not a fresh value of this epoch and was marked deleted instead).
pub const CACHE_UPDATES: &str = "chatlog_cache_updates_total";

/// Conversation lists cut at `dal.max_conversations` (the user has more conversations).
pub const CONVERSATIONS_TRUNCATED: &str = "chatlog_repo_conversations_truncated_total";

/// Sessions' latest messages read (`result`: `hit` in Redis, `miss` loaded from CQL and filled,
/// `degraded` read from CQL because Redis was unreadable).
pub const LATEST_READS: &str = "chatlog_repo_latest_reads_total";

/// Misses of a session's latest that joined a load of the same session in flight in this process.
pub const LATEST_COALESCED: &str = "chatlog_repo_latest_coalesced_total";

/// Registers the help text (and unit) of every metric above with the installed recorder, so the
/// exposition carries a `# HELP` line for each. Called by [`History::new`](crate::history::History::new)
/// and [`Dal::new`](crate::repo::Dal::new); harmless to call again.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(SEQ_ALLOCATIONS, "Per-session seq allocations, by path.");
    describe_counter!(
        HISTORY_REQUESTS,
        "History requests, by operation and the source that answered (window, database, both)."
    );
    describe_histogram!(
        HISTORY_REQUEST_DURATION,
        Unit::Seconds,
        "Time of one history request, by operation."
    );
    describe_counter!(
        HISTORY_COALESCED,
        "History requests that joined an identical request already in flight."
    );
    describe_counter!(HISTORY_DB_READS, "History requests that read the database.");
    describe_counter!(HISTORY_DB_QUERIES, "CQL queries run by history.");
    describe_counter!(
        HISTORY_WINDOW_ERRORS,
        "Windows history could not use, by reason (member, redis, epoch); the database answered."
    );
    describe_counter!(
        HISTORY_WINDOW_HOLE_ROWS,
        "Rows found in the database inside a window's holes."
    );
    describe_counter!(CACHE_REQUESTS, "Cache lookups, by repository and result.");
    describe_counter!(
        CACHE_LOADS,
        "Database reads of cache misses (one per key per loader), by repository."
    );
    describe_counter!(
        CACHE_LOCK_WAITS,
        "Waits for another process's loader of the same key, by repository."
    );
    describe_counter!(
        CACHE_DEGRADED_READS,
        "Reads served by the database because the cache could not be used, by repository."
    );
    describe_counter!(
        CACHE_FILLS_REFUSED,
        "Cache fills refused because a write marked the entry meanwhile, by repository."
    );
    describe_counter!(
        CACHE_MARKS_FAILED,
        "Deletion marks Redis did not take (kept and retried), by repository."
    );
    describe_gauge!(
        CACHE_PENDING_MARKS,
        "Deletion marks kept for retry now, by repository."
    );
    describe_counter!(
        CACHE_COALESCED,
        "Cache misses that joined a load of the same key in flight in this process."
    );
    describe_counter!(
        CACHE_LATE_JOINS,
        "Cache misses that joined a load after its value was asked for and loaded again, by repository."
    );
    describe_counter!(
        REPO_MEMBERS_UNCACHED_PAGES,
        "Member pages read from the database because the group outgrows the cache."
    );
    describe_counter!(
        CACHE_UPDATES,
        "In-place updates of cached entries, by repository and result (in_place, marked)."
    );
    describe_counter!(
        CONVERSATIONS_TRUNCATED,
        "Conversation lists cut at dal.max_conversations."
    );
    describe_counter!(
        LATEST_READS,
        "Sessions' latest messages read, by result (hit, miss, degraded)."
    );
    describe_counter!(
        LATEST_COALESCED,
        "Misses of a session's latest that joined a load in flight in this process."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric of this crate renders with a `# HELP` line once described (a metric added
    /// without help text fails here when it is added to the list).
    #[test]
    fn every_metric_has_help_text() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let counters = [
            SEQ_ALLOCATIONS,
            HISTORY_REQUESTS,
            HISTORY_COALESCED,
            HISTORY_DB_READS,
            HISTORY_DB_QUERIES,
            HISTORY_WINDOW_ERRORS,
            HISTORY_WINDOW_HOLE_ROWS,
            CACHE_REQUESTS,
            CACHE_LOADS,
            CACHE_LOCK_WAITS,
            CACHE_DEGRADED_READS,
            CACHE_FILLS_REFUSED,
            CACHE_MARKS_FAILED,
            CACHE_COALESCED,
            CACHE_LATE_JOINS,
            REPO_MEMBERS_UNCACHED_PAGES,
            CACHE_UPDATES,
            CONVERSATIONS_TRUNCATED,
            LATEST_READS,
            LATEST_COALESCED,
        ];
        metrics::with_local_recorder(&recorder, || {
            describe();
            for name in counters {
                metrics::counter!(name).increment(1);
            }
            metrics::gauge!(CACHE_PENDING_MARKS).set(1.0);
            metrics::histogram!(HISTORY_REQUEST_DURATION).record(0.001);
        });
        let text = handle.render();
        for name in counters
            .iter()
            .chain(&[CACHE_PENDING_MARKS, HISTORY_REQUEST_DURATION])
        {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no help text:\n{text}"
            );
        }
    }
}
