//! (e) Real-time order of one session's acks.

use std::collections::BTreeMap;

use crate::record::Ack;

/// Acks of one session that break real-time order: `(b, why, a)` where `a` was acknowledged
/// before `b`'s first attempt began, yet `b` did not get a higher seq, or (same partition) a higher
/// Kafka offset; and acks on another partition than the session's (`a` is then the first ack on
/// the session's partition). Sequential sends, two producers sending at once and late sends are
/// all held to this: whatever was acknowledged before a send started is ordered before it.
pub fn order_violations(acks: &[Option<Ack>]) -> Vec<(&Ack, &'static str, &Ack)> {
    let all: Vec<&Ack> = acks.iter().flatten().collect();
    let mut out = Vec::new();
    let Some(first) = all.first() else {
        return out;
    };
    // The session's partition: the one most of its acks name.
    let mut counts: BTreeMap<i32, usize> = BTreeMap::new();
    for a in &all {
        *counts.entry(a.partition).or_default() += 1;
    }
    let partition = counts
        .iter()
        .max_by_key(|(p, n)| (**n, std::cmp::Reverse(**p)))
        .map_or(first.partition, |(p, _)| *p);
    let home = all
        .iter()
        .find(|a| a.partition == partition)
        .copied()
        .unwrap_or(first);
    // Acks by ack time, with the running maximum of seq and offset (and who holds it).
    let mut by_ack: Vec<&Ack> = all.clone();
    by_ack.sort_by(|x, y| x.acked_at.total_cmp(&y.acked_at));
    let mut max_seq: Vec<&Ack> = Vec::with_capacity(by_ack.len());
    let mut max_offset: Vec<Option<&Ack>> = Vec::with_capacity(by_ack.len());
    for (i, a) in by_ack.iter().enumerate() {
        let prev_seq = if i == 0 { *a } else { max_seq[i - 1] };
        max_seq.push(if a.seq > prev_seq.seq { a } else { prev_seq });
        let prev_off = if i == 0 { None } else { max_offset[i - 1] };
        let here = (a.partition == partition).then_some(*a);
        max_offset.push(match (prev_off, here) {
            (Some(p), Some(h)) => Some(if h.offset > p.offset { h } else { p }),
            (p, h) => p.or(h),
        });
    }
    for b in &all {
        if b.partition != partition {
            out.push((*b, "another partition than the session's", home));
            continue;
        }
        let before = by_ack.partition_point(|a| a.acked_at < b.first_try_at);
        if before == 0 {
            continue;
        }
        let a = max_seq[before - 1];
        if a.seq >= b.seq {
            out.push((
                *b,
                "seq not above that of a message acknowledged before it was sent",
                a,
            ));
        } else if let Some(a) = max_offset[before - 1]
            && a.offset >= b.offset
        {
            out.push((
                *b,
                "offset not above that of a message acknowledged before it was sent",
                a,
            ));
        }
    }
    out
}
