//! Retention: how long the messages of each session type are kept (none by default), and the
//! CQL time to live a row gets from it.
//!
//! Expiry is anchored at the message's `server_time`, not at the write: a row written (or
//! replayed, or mutated) later gets what remains of its retention, so all cells of one message
//! expire together and a replay from offset 0 neither extends a message's life nor brings back one
//! that expired — the consumer skips it ([`Expiry::Expired`]), in CQL and in the window. History
//! stops serving a message once its retention has passed, even while its window member lingers
//! (members leave by trimming and the window's idle TTL).
//!
//! Cost (ARCHITECTURE.md, "Retention"): a TTL adds 8 bytes of expiry per cell, and expired cells
//! become tombstones until compaction purges them after `gc_grace_seconds`. Keep the default
//! compaction (size-tiered or leveled; ScyllaDB's incremental): time-window compaction would
//! misplace recalled rows, whose write timestamps carry the final bit of their version.

use std::time::Duration;

use chatlog_schemas::SessionType;
use serde::{Deserialize, Serialize};

/// Retention per session type; a type without one is kept forever.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// One-to-one conversations (e.g. `"365d"`); none: forever.
    #[serde(with = "humantime_serde")]
    pub single: Option<Duration>,
    /// Group conversations; none: forever.
    #[serde(with = "humantime_serde")]
    pub group: Option<Duration>,
    /// System notifications; none: forever.
    #[serde(with = "humantime_serde")]
    pub system: Option<Duration>,
}

/// What retention says about one message at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Kept forever (CQL TTL 0).
    Never,
    /// Kept this many more seconds (the CQL TTL of a write now).
    In(i32),
    /// Past its retention: not written, not served.
    Expired,
}

impl Expiry {
    /// The CQL `USING TTL` of a write now (0: forever); `None` when expired.
    pub fn ttl_secs(self) -> Option<i32> {
        match self {
            Expiry::Never => Some(0),
            Expiry::In(secs) => Some(secs),
            Expiry::Expired => None,
        }
    }
}

impl Retention {
    /// The retention of a session type.
    pub fn of(&self, session_type: SessionType) -> Option<Duration> {
        match session_type {
            SessionType::Single => self.single,
            SessionType::Group => self.group,
            SessionType::System => self.system,
        }
    }

    /// Whether any session type has a retention.
    pub fn is_set(&self) -> bool {
        self.single.is_some() || self.group.is_some() || self.system.is_some()
    }

    /// The expiry of a message of `session_type` sent at `server_time_us`, seen at `now_us`.
    /// A remaining time is rounded up to whole seconds (never 0, which CQL reads as forever) and
    /// capped at CQL's maximum TTL (20 years).
    pub fn expiry(&self, session_type: SessionType, server_time_us: i64, now_us: i64) -> Expiry {
        const MAX_TTL: i64 = 20 * 365 * 24 * 3600;
        let Some(keep) = self.of(session_type) else {
            return Expiry::Never;
        };
        let keep_us = i64::try_from(keep.as_micros()).unwrap_or(i64::MAX);
        let remaining_us = server_time_us
            .saturating_add(keep_us)
            .saturating_sub(now_us);
        if remaining_us <= 0 {
            return Expiry::Expired;
        }
        let secs = (remaining_us.saturating_add(999_999) / 1_000_000).min(MAX_TTL);
        Expiry::In(i32::try_from(secs).unwrap_or(i32::MAX))
    }
}

/// Now, µs since the Unix epoch (the unit of `server_time`).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_US: i64 = 86_400_000_000;

    #[test]
    fn expiry_is_anchored_at_the_send_not_the_write() {
        let r = Retention {
            group: Some(Duration::from_secs(30 * 86_400)),
            ..Retention::default()
        };
        let sent = 1_000 * DAY_US;
        assert_eq!(r.expiry(SessionType::Single, sent, sent), Expiry::Never);
        assert_eq!(
            r.expiry(SessionType::Group, sent, sent),
            Expiry::In(30 * 86_400)
        );
        // Written (or replayed) ten days later: twenty days remain, not thirty.
        assert_eq!(
            r.expiry(SessionType::Group, sent, sent + 10 * DAY_US),
            Expiry::In(20 * 86_400)
        );
        // A fraction of a second left is one second, never 0 (= forever in CQL).
        assert_eq!(
            r.expiry(SessionType::Group, sent, sent + 30 * DAY_US - 1),
            Expiry::In(1)
        );
        assert_eq!(
            r.expiry(SessionType::Group, sent, sent + 30 * DAY_US),
            Expiry::Expired
        );
        assert_eq!(Expiry::Expired.ttl_secs(), None);
        assert_eq!(Expiry::Never.ttl_secs(), Some(0));
    }

    #[test]
    fn retention_parses_per_session_type_and_refuses_unknown_keys() {
        let r: Retention = serde_json::from_str(r#"{"group": "90d", "system": "30d"}"#).unwrap();
        assert_eq!(r.group, Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(r.single, None);
        assert!(r.is_set());
        assert!(serde_json::from_str::<Retention>(r#"{"groups": "90d"}"#).is_err());
        assert!(!Retention::default().is_set());
    }
}
