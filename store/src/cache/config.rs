//! [`CacheConfig`]: the settings of the repositories' cache.

use std::time::Duration;

use serde::Deserialize;

use crate::{Error, Result};

/// Settings of the cache in front of the repositories (users, sessions, members, conversation
/// lists). Durations are written like `"1h"`, `"3s"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Off: every read goes to the database (the decorators pass through). Default on.
    pub enabled: bool,
    /// How long a filled entry lives; each fill draws its TTL from `ttl ± ttl_jitter`, so
    /// entries filled together (after a deploy, a Redis restart) do not expire together.
    /// Default 1 h.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Spread of the TTL around `ttl` (must be below `ttl`). Default 10 min.
    #[serde(with = "humantime_serde")]
    pub ttl_jitter: Duration,
    /// How long a "does not exist" answer is cached, so lookups of absent ids do not all reach
    /// the database. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub empty_ttl: Duration,
    /// How long a loader owns an entry while it reads the database; others wait for it meanwhile
    /// (polling), and take over when it expires (a loader that died). Must cover a database
    /// read. Default 3 s.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Longest a read waits for another process's loader before reading the database itself.
    /// Default 5 s.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// How long a write's deletion mark stays (it only has to outlive the loads in flight, which
    /// the lease bounds). Default 10 s.
    #[serde(with = "humantime_serde")]
    pub mark_ttl: Duration,
    /// Most deletion marks a process keeps for retrying while Redis is unreachable. Beyond it the
    /// process stops reading the cache (every read goes to the database) until it restarts, since
    /// it can no longer vouch for what other processes read. Default 100,000.
    pub max_pending_marks: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            ttl: Duration::from_secs(3600),
            ttl_jitter: Duration::from_secs(600),
            empty_ttl: Duration::from_secs(30),
            lease: Duration::from_secs(3),
            max_wait: Duration::from_secs(5),
            mark_ttl: Duration::from_secs(10),
            max_pending_marks: 100_000,
        }
    }
}

impl CacheConfig {
    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<()> {
        let ms = |d: Duration| d.as_millis();
        if ms(self.ttl) == 0 || ms(self.empty_ttl) == 0 || ms(self.lease) == 0 {
            return Err(Error::Config(
                "cache.ttl, cache.empty_ttl and cache.lease must be at least 1ms".into(),
            ));
        }
        if self.ttl_jitter >= self.ttl {
            return Err(Error::Config(format!(
                "cache.ttl_jitter ({:?}) must be below cache.ttl ({:?})",
                self.ttl_jitter, self.ttl
            )));
        }
        if self.mark_ttl < self.lease {
            return Err(Error::Config(format!(
                "cache.mark_ttl ({:?}) must be at least cache.lease ({:?}): a mark must outlive \
                 the loads in flight",
                self.mark_ttl, self.lease
            )));
        }
        Ok(())
    }

    /// A TTL in ms drawn from `ttl ± ttl_jitter`.
    pub(super) fn draw_ttl_ms(&self) -> u64 {
        let ttl = self.ttl.as_millis() as u64;
        let jitter = self.ttl_jitter.as_millis() as u64;
        if jitter == 0 {
            return ttl;
        }
        ttl - jitter + rand::random_range(0..=2 * jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_spread_within_the_jitter() {
        let c = CacheConfig::default();
        c.validate().unwrap();
        let draws: Vec<u64> = (0..200).map(|_| c.draw_ttl_ms()).collect();
        assert!(draws.iter().all(|&t| (3_000_000..=4_200_000).contains(&t)));
        assert!(draws.iter().any(|&t| t != draws[0]), "TTLs spread");
    }

    #[test]
    fn contradicting_settings_are_refused() {
        let jitter = CacheConfig {
            ttl_jitter: Duration::from_secs(3600),
            ..CacheConfig::default()
        };
        assert!(
            jitter
                .validate()
                .unwrap_err()
                .to_string()
                .contains("ttl_jitter")
        );
        let mark = CacheConfig {
            mark_ttl: Duration::from_secs(1),
            ..CacheConfig::default()
        };
        assert!(
            mark.validate()
                .unwrap_err()
                .to_string()
                .contains("mark_ttl")
        );
    }
}
