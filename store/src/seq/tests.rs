//! Unit tests of the pure parts: the adaptive step, idempotency records, config bounds.

use std::time::Duration;

use super::fast::parse_record;
use super::*;

fn config(min: i64, max: i64) -> SeqConfig {
    SeqConfig {
        min_segment: min,
        max_segment: max,
        segment_target_lifetime: Duration::from_secs(60),
        ..SeqConfig::default()
    }
}

#[test]
fn step_grows_by_the_rate_when_fast_halves_when_slow_and_stays_in_bounds() {
    let c = config(100, 1000);
    let now = 10_000_000;
    assert_eq!(c.next_step(0, 0, now), 100, "first segment is the minimum");
    let wide = config(100, 1_000_000);
    assert_eq!(
        wide.next_step(100, now - 20_000, now),
        300,
        "used in a third of the target: three times as large"
    );
    assert_eq!(
        wide.next_step(100, now - 40_000, now),
        200,
        "used a little faster than the target: at least twice"
    );
    assert_eq!(
        wide.next_step(100, now - 1_000, now),
        100 * GROWTH_MAX,
        "a burst grows it at most GROWTH_MAX times"
    );
    assert_eq!(
        wide.next_step(100, now, now),
        100 * GROWTH_MAX,
        "used within the millisecond"
    );
    assert_eq!(c.next_step(800, now - 1_000, now), 1000, "capped");
    assert_eq!(
        c.next_step(400, now - 90_000, now),
        400,
        "within 1-2x target: same"
    );
    assert_eq!(c.next_step(400, now - 200_000, now), 200);
    assert_eq!(c.next_step(150, now - 200_000, now), 100, "floored");
    assert_eq!(c.next_step(5000, 0, now), 1000, "unknown age: clamped only");
    assert_eq!(
        c.next_step(200, now + 5_000, now),
        400,
        "clock skew counts as fast"
    );
}

#[test]
fn records_parse_and_msg_ids_may_hold_colons() {
    assert_eq!(
        parse_record(b"42:1700000000000000:0190-ab:cd"),
        Some((42, 1_700_000_000_000_000, "0190-ab:cd".to_owned()))
    );
    assert_eq!(
        parse_record(b"42:17:#ab12:0190-ab:cd"),
        Some((42, 17, "0190-ab:cd".to_owned())),
        "with a fingerprint"
    );
    assert_eq!(
        parse_record(b"42:17::m"),
        Some((42, 17, ":m".to_owned())),
        "a legacy msg_id may start with a colon"
    );
    assert_eq!(parse_record(b"x:1:m"), None);
    assert_eq!(parse_record(b"1:2"), None);
}

#[test]
fn config_rejects_bad_bounds() {
    SeqConfig::default().validate().unwrap();
    assert!(config(10, 5).validate().is_err());
    assert!(config(0, 5).validate().is_err());
    let c = SeqConfig {
        dedup_ttl: Duration::ZERO,
        ..SeqConfig::default()
    };
    assert!(c.validate().is_err());
    // WAIT with a zero timeout blocks forever: refused, but only when the wait is on.
    let c = SeqConfig {
        wait_replicas: 1,
        wait_timeout: Duration::ZERO,
        ..SeqConfig::default()
    };
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("wait_timeout")
    );
    let c = SeqConfig {
        wait_timeout: Duration::ZERO,
        ..SeqConfig::default()
    };
    c.validate().unwrap();
}
