//! [`HistoryConfig`]: the history reader's settings.

use std::time::Duration;

use serde::Deserialize;

use crate::messages;
use crate::window::WindowConfig;

/// Settings of the history reader.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// The window settings the consumer writes with (history only reads; `size` is the `W` that
    /// [`crate::verify::verify_window`] compares).
    pub window: WindowConfig,
    /// Rows per partition bucket; must equal the writer's
    /// [`BatchLimits::bucket_size`](crate::messages::BatchLimits::bucket_size).
    pub bucket_size: i64,
    /// `K`: a table walk stops after this many consecutive empty buckets (see the module docs).
    pub max_empty_buckets: u32,
    /// The largest `n`/`limit` served in one page; larger requests are capped (and say so through
    /// [`Page::next`](super::Page::next)).
    pub max_limit: usize,
    /// The settle horizon: a gap is reported in [`Page::pending`](super::Page::pending) while the nearest existing
    /// message above it is younger than this (by its `server_time_us`), in [`Page::missing`](super::Page::missing)
    /// afterwards. Set it to at least the producer's `message_timeout` (30 s by default,
    /// librdkafka retries included) plus Logic's retry window: a seq whose send is still being
    /// retried must not be reported missing. Ages compare the reader's clock with the
    /// `server_time_us` Logic stamped, so leave a margin for clock skew between hosts. Default
    /// 60 s. Written like `"60s"`, `"2m"`.
    #[serde(with = "humantime_serde")]
    pub settle_horizon: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            window: WindowConfig::default(),
            bucket_size: messages::DEFAULT_BUCKET_SIZE,
            max_empty_buckets: 16,
            max_limit: 1000,
            settle_horizon: Duration::from_secs(60),
        }
    }
}
