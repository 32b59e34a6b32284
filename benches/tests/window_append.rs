//! The window script's fast path (one variadic ZADD for new seqs above the head) must leave exactly
//! what the per-seq script leaves (the original, with the rules added since: a seq below a
//! non-empty window's lowest member is not added; an empty window starts only in proven mode). Differential test against the local stack's Redis:
//! random windows, random batches with replays, late seqs, duplicate seqs and older/newer
//! versions, both scripts applied to twin keys, the resulting ZSETs compared. The fast script also
//! keeps the session's latest (`KEYS[3]`): it must end at the highest (seq, version) appended,
//! whatever the order, the first member of a tie kept.

use chatlog_store::RedisConnection;
use chatlog_store::window::APPEND_LUA;

/// The script before the fast path (store/src/window.rs at the consumer's first release), plus the
/// lowest-member rule and the empty-window rule (an empty window is started only in proven mode,
/// `ARGV[3] == 'p'`; otherwise nothing is written and the call returns -1).
const REFERENCE_LUA: &str = r#"
local key = KEYS[1]
local size = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local low = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2])
if low == nil and ARGV[3] ~= 'p' then
  return -1
end
local function apply(seq, member)
  local version = string.sub(member, 1, 16)
  if low == nil or tonumber(seq) >= low then
    local here = redis.call('ZRANGEBYSCORE', key, seq, seq)
    local keep_existing = false
    for _, existing in ipairs(here) do
      if existing ~= member then
        if string.sub(existing, 1, 16) > version then
          keep_existing = true
        else
          redis.call('ZREM', key, existing)
        end
      end
    end
    if not keep_existing then
      redis.call('ZADD', key, seq, member)
    end
  end
end
for i = 4, #ARGV, 2 do
  apply(ARGV[i], ARGV[i + 1])
end
local n = redis.call('ZCARD', key)
if n > size then
  redis.call('ZREMRANGEBYRANK', key, 0, n - size - 1)
  n = size
end
if ttl > 0 then
  redis.call('PEXPIRE', key, ttl)
end
return n
"#;

/// A small deterministic generator (no dependency needed for a test's randomness).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn member(seq: u64, version: u64, variant: u64) -> Vec<u8> {
    let mut m = format!("{version:016x}").into_bytes();
    m.extend_from_slice(format!("avro-of-{seq}-{variant}").as_bytes());
    m
}

async fn append(
    con: &mut RedisConnection,
    script: &redis::Script,
    keys: &[&str],
    size: u64,
    proven: bool,
    entries: &[(i64, Vec<u8>)],
) -> i64 {
    let mut inv = script.prepare_invoke();
    for key in keys {
        inv.key(*key);
    }
    inv.arg(size)
        .arg(60_000)
        .arg(if proven { "p" } else { "a" });
    for (seq, m) in entries {
        inv.arg(*seq).arg(m.as_slice());
    }
    inv.invoke_async(con).await.expect("script")
}

async fn dump(con: &mut RedisConnection, key: &str) -> Vec<(Vec<u8>, f64)> {
    redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(con)
        .await
        .expect("zrange")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_leaves_what_the_per_seq_script_leaves() {
    let mut con = chatlog::redis_connection().await;
    let reference = redis::Script::new(REFERENCE_LUA);
    let fast = redis::Script::new(APPEND_LUA);
    let run = chatlog::unique("winlua");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for case in 0..1000 {
        let (a, b, epoch, latest) = (
            format!("chatlog:{{{run}}}:a{case}"),
            format!("chatlog:{{{run}}}:b{case}"),
            format!("chatlog:{{{run}}}:e{case}"),
            format!("chatlog:{{{run}}}:l{case}"),
        );
        // The oracle of the latest: (seq, version, member), raised only by a strictly higher
        // (seq, version).
        let mut expected: Option<(u64, u64, Vec<u8>)> = None;
        let size = 1 + rng.below(30);
        let top = 5 + rng.below(60);
        // Two or three appends per case: the state after one is the start of the next.
        for _ in 0..2 + rng.below(2) {
            // One call in three proven (the table's newest rows, as the writer starts a window).
            let proven = rng.below(3) == 0;
            let entries: Vec<(i64, Vec<u8>)> = (0..rng.below(25))
                .map(|_| {
                    let seq = 1 + rng.below(top + 10);
                    (seq as i64, member(seq, rng.below(4), rng.below(2)))
                })
                .collect();
            for (seq, m) in &entries {
                let seq = *seq as u64;
                let version =
                    u64::from_str_radix(std::str::from_utf8(&m[..16]).unwrap(), 16).unwrap();
                if expected
                    .as_ref()
                    .is_none_or(|(s, v, _)| (seq, version) > (*s, *v))
                {
                    expected = Some((seq, version, m.clone()));
                }
            }
            let na = append(&mut con, &reference, &[&a], size, proven, &entries).await;
            let nb = append(
                &mut con,
                &fast,
                &[&b, &epoch, &latest],
                size,
                proven,
                &entries,
            )
            .await;
            assert_eq!(na, nb, "case {case}: cardinality");
            assert_eq!(
                dump(&mut con, &a).await,
                dump(&mut con, &b).await,
                "case {case}: after appending {entries:?}"
            );
            let (s, m): (Option<u64>, Option<Vec<u8>>) = redis::cmd("HMGET")
                .arg(&latest)
                .arg("s")
                .arg("m")
                .query_async(&mut con)
                .await
                .expect("hmget");
            assert_eq!(
                s.zip(m),
                expected.as_ref().map(|(s, _, m)| (*s, m.clone())),
                "case {case}: the latest after appending {entries:?}"
            );
        }
        let _: () = redis::cmd("DEL")
            .arg(&a)
            .arg(&b)
            .arg(&epoch)
            .arg(&latest)
            .query_async(&mut con)
            .await
            .expect("del");
    }
}
