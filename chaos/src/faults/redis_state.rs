//! The Redis-state faults that need more than a restart: `wrongtype` (a key clash) and
//! `rollback` (Redis back in time).

use std::collections::BTreeMap;
use std::time::Duration;

use super::ctx::Ctx;
use super::kind::WRONGTYPE_MESSAGES;

/// `wrongtype`: a session whose window key is a Redis string. Runs between the other sequential
/// faults, so no FLUSHALL or rollback removes the key while its messages are consumed.
pub(super) async fn wrongtype(ctx: &Ctx, n: usize) -> anyhow::Result<String> {
    let session_id = format!("{}-wrongtype-{n}", ctx.load.plan().run);
    // Both keys of the window: the script reads the epoch key first (a string) and resets a
    // window whose epoch is absent or foreign, so a clash on the window key alone would be
    // repaired; a list at the epoch key makes every append answer WRONGTYPE.
    let keys = [
        chatlog_store::keys::window(&session_id),
        chatlog_store::keys::window_epoch(&session_id),
    ];
    let mut con = ctx.stack.redis().await?;
    let _: () = redis::pipe()
        .cmd("SET")
        .arg(&keys[0])
        .arg("chaos: a string where a window belongs")
        .ignore()
        .cmd("RPUSH")
        .arg(&keys[1])
        .arg("chaos: a list where an epoch belongs")
        .ignore()
        .query_async(&mut con)
        .await?;
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for j in 0..WRONGTYPE_MESSAGES {
        let (partition, offset) = ctx.load.send_poisoned(&session_id, j).await?;
        let o = last.entry(partition).or_default();
        *o = (*o).max(offset);
    }
    // The group commits past a record once it is persisted or in the DLQ.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    for (&partition, &offset) in &last {
        loop {
            let (k, t, g) = (
                ctx.stack.kafka.clone(),
                ctx.topic.clone(),
                ctx.group.clone(),
            );
            let committed = tokio::task::spawn_blocking(move || {
                crate::drain::committed_offset(&k, &t, &g, partition)
            })
            .await?;
            if matches!(committed, Ok(c) if c > offset) {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut con).await?;
                anyhow::bail!(
                    "wrongtype: the group did not commit past partition {partition} offset \
                     {offset} within 180 s (last answer: {committed:?}): the partition stalls \
                     on a permanent write error"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut con).await?;
    Ok(format!(
        "{session_id}: window key SET to a string and its epoch key made a list, {WRONGTYPE_MESSAGES} messages sent; the group \
         committed past them (partition → last offset {last:?}); keys deleted"
    ))
}

/// `rollback`: a snapshot now, Redis restarted from it `rollback_after` later.
pub(super) async fn rollback(ctx: &Ctx, n: usize) -> anyhow::Result<String> {
    let file = ctx.opts.run_dir.join(format!("redis-snapshot-{n}.rdb"));
    let file_arg = file.to_string_lossy().into_owned();
    let taken = ctx.events.now();
    ctx.stack.script(&["redis-snapshot", &file_arg]).await?;
    let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    tokio::time::sleep(ctx.opts.rollback_after).await;
    let killed = ctx.events.now();
    ctx.stack.script(&["redis-rollback", &file_arg]).await?;
    let back = ctx.events.now();
    // Everything written after the snapshot is gone.
    ctx.events.redis_loss(taken, back);
    Ok(format!(
        "BGSAVE at {taken:.1}s ({bytes} bytes, kept as {}); kill -9 of Redis at {killed:.1}s, \
         restarted from that snapshot, serving again {:.1}s later: {:.1}s of writes lost",
        file.display(),
        back - killed,
        killed - taken
    ))
}
