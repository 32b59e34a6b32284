//! The Smart DAL's cached repositories against the local stack (real Cassandra and Redis): one
//! loader per cold key, no stale value after a write returns whatever the interleaving, reads
//! served while Redis is away and nothing stale once it is back.
//!
//! "Two processes" are two `Cache` values over one Redis: each has its own single-flight map and
//! its own retry queue, so only Redis coordinates them, as between two Logic hosts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chatlog::{TestRedis, connect_to, free_port, fresh_keyspace, redis_connection, unique};
use chatlog_store::RedisConfig;
use chatlog_store::cache::{Cache, CacheConfig};
use chatlog_store::repo::users::{CachedUserRepo, CqlUserRepo, User, UserRepo, UserStatus};

fn user(user_id: &str, version: u64) -> User {
    User {
        user_id: user_id.to_owned(),
        nickname: format!("v{version}"),
        avatar_url: format!("https://example.invalid/{user_id}.png"),
        status: UserStatus::Active,
        ext: [("version".to_owned(), version.to_string())].into(),
        updated_at_ms: version as i64,
    }
}

fn version_of(user: &User) -> u64 {
    user.nickname[1..].parse().expect("nickname v<version>")
}

async fn cql_users() -> Arc<CqlUserRepo> {
    let (cql, config) = fresh_keyspace("repo").await;
    Arc::new(
        CqlUserRepo::new(cql, &config.keyspace)
            .await
            .expect("users repo"),
    )
}

fn cached<R: UserRepo>(inner: &Arc<R>, redis: chatlog_store::RedisConnection) -> CachedUserRepo<R> {
    cached_with(inner, redis, CacheConfig::default())
}

fn cached_with<R: UserRepo>(
    inner: &Arc<R>,
    redis: chatlog_store::RedisConnection,
    config: CacheConfig,
) -> CachedUserRepo<R> {
    let cache = Cache::new(redis.into(), config, "users").expect("cache");
    CachedUserRepo::new(inner.clone(), cache)
}

#[tokio::test]
async fn stampede_of_a_thousand_cold_gets_from_two_processes_reads_the_database_once() {
    let db = cql_users().await;
    let id = unique("u");
    db.upsert(&user(&id, 1)).await.unwrap();
    // One read, whatever the machine's speed: leases and waits longer than any load here (with
    // the defaults, a load slower than the lease lets the other process take over, as designed).
    let patient = CacheConfig {
        lease: Duration::from_secs(60),
        max_wait: Duration::from_secs(60),
        mark_ttl: Duration::from_secs(60),
        ..CacheConfig::default()
    };
    let a = cached_with(&db, redis_connection().await, patient.clone());
    let b = cached_with(&db, redis_connection().await, patient);
    let gets = (0..1000).map(|i| {
        let repo = if i % 2 == 0 { &a } else { &b };
        repo.get(&id)
    });
    let users = futures::future::join_all(gets).await;
    for u in users {
        assert_eq!(u.unwrap().map(|u| version_of(&u)), Some(1));
    }
    assert_eq!(db.db_reads(), 1, "1,000 cold gets, one database read");
    // Warm now: another thousand never reach the database.
    let warm = futures::future::join_all((0..1000).map(|_| b.get(&id))).await;
    assert!(warm.iter().all(|u| u.as_ref().unwrap().is_some()));
    assert_eq!(db.db_reads(), 1);
}

#[tokio::test]
async fn absent_users_are_cached_as_absent_and_found_once_written() {
    let db = cql_users().await;
    let repo = cached(&db, redis_connection().await);
    let id = unique("nobody");
    assert_eq!(repo.get(&id).await.unwrap(), None);
    assert_eq!(repo.get(&id).await.unwrap(), None);
    assert_eq!(db.db_reads(), 1, "the absence is cached");
    repo.upsert(&user(&id, 3)).await.unwrap();
    assert_eq!(repo.get(&id).await.unwrap(), Some(user(&id, 3)));
    let many = repo
        .get_many(&[id.clone(), unique("nobody"), id.clone()])
        .await
        .unwrap();
    assert_eq!(many, vec![Some(user(&id, 3)), None, Some(user(&id, 3))]);
    repo.delete(&id).await.unwrap();
    assert_eq!(repo.get(&id).await.unwrap(), None);
    assert!(
        repo.get("bad}id").await.is_err(),
        "a hash-tag breaker is refused"
    );
}

/// The users table with a delay after each read: a loader holds what it read for a while before
/// filling the cache, the window in which a write slips in.
struct SlowReads {
    db: Arc<CqlUserRepo>,
    seed: AtomicU64,
    /// Held after the first read instead of a spread pause (a load that surely overlaps a
    /// write), and the reads done so far.
    first_hold: Duration,
    reads: AtomicU64,
}

impl SlowReads {
    fn new(db: &Arc<CqlUserRepo>, first_hold: Duration) -> SlowReads {
        SlowReads {
            db: db.clone(),
            seed: AtomicU64::new(7),
            first_hold,
            reads: AtomicU64::new(0),
        }
    }

    /// Returns once a load has read the database (polled: the read happens inside the cache).
    async fn until_first_read(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.reads.load(Ordering::SeqCst) == 0 {
            assert!(
                Instant::now() < deadline,
                "the first load never read the database"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn pause(&self) -> Duration {
        // A cheap spread of 0–15 ms (xorshift of a counter): interleavings differ per read.
        let mut x = self.seed.fetch_add(0x9E37_79B9, Ordering::Relaxed) | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        Duration::from_millis(x % 16)
    }
}

impl UserRepo for SlowReads {
    async fn get(&self, user_id: &str) -> chatlog_store::Result<Option<User>> {
        let read = self.db.get(user_id).await;
        let first = self.reads.fetch_add(1, Ordering::SeqCst) == 0;
        let pause = if first && !self.first_hold.is_zero() {
            self.first_hold
        } else {
            self.pause()
        };
        tokio::time::sleep(pause).await;
        read
    }
    async fn get_many(&self, ids: &[String]) -> chatlog_store::Result<Vec<Option<User>>> {
        self.db.get_many(ids).await
    }
    async fn upsert(&self, user: &User) -> chatlog_store::Result<()> {
        tokio::time::sleep(self.pause()).await;
        self.db.upsert(user).await
    }
    async fn delete(&self, user_id: &str) -> chatlog_store::Result<()> {
        self.db.delete(user_id).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_reads_never_follow_a_returned_write_under_slow_loaders() {
    let db = cql_users().await;
    let slow = Arc::new(SlowReads::new(&db, Duration::ZERO));
    let processes = [
        Arc::new(cached(&slow, redis_connection().await)),
        Arc::new(cached(&slow, redis_connection().await)),
    ];
    let id = unique("u");
    processes[0].upsert(&user(&id, 0)).await.unwrap();
    // Writes: version k returned at `returned[k]` (µs since `t0`).
    let t0 = Instant::now();
    let writes = 150u64;
    let returned: Arc<Vec<AtomicU64>> = Arc::new((0..=writes).map(|_| AtomicU64::new(0)).collect());
    let writer = {
        let (repo, id, returned) = (processes[0].clone(), id.clone(), returned.clone());
        tokio::spawn(async move {
            for k in 1..=writes {
                repo.upsert(&user(&id, k)).await.unwrap();
                returned[k as usize].store(t0.elapsed().as_micros() as u64 + 1, Ordering::SeqCst);
            }
        })
    };
    let readers: Vec<_> = (0..8)
        .map(|r| {
            let (repo, id) = (processes[r % 2].clone(), id.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    let started = t0.elapsed().as_micros() as u64;
                    let u = repo.get(&id).await.unwrap().expect("the user exists");
                    seen.push((started, version_of(&u)));
                    if version_of(&u) == writes {
                        return seen;
                    }
                }
            })
        })
        .collect();
    writer.await.unwrap();
    let mut reads = 0;
    let mut stale = Vec::new();
    for reader in readers {
        for (started, version) in reader.await.unwrap() {
            reads += 1;
            // The newest write that had returned before this read started.
            let floor = (1..=writes)
                .rev()
                .find(|&k| {
                    let at = returned[k as usize].load(Ordering::SeqCst);
                    at != 0 && at <= started
                })
                .unwrap_or(0);
            if version < floor {
                stale.push((started, version, floor));
            }
        }
    }
    assert!(
        reads > writes as usize,
        "readers raced the writer ({reads} reads)"
    );
    assert!(
        stale.is_empty(),
        "{} stale reads of {reads}: {:?}",
        stale.len(),
        &stale[..stale.len().min(10)]
    );
}

#[tokio::test]
async fn stale_value_never_reaches_a_read_that_joined_a_load_after_a_write_returned() {
    let db = cql_users().await;
    let slow = Arc::new(SlowReads::new(&db, Duration::from_millis(300)));
    let repo = Arc::new(cached(&slow, redis_connection().await));
    let id = unique("u");
    db.upsert(&user(&id, 1)).await.unwrap();
    // A loads: it reads v1, then holds it for 300 ms before filling.
    let first = write_while_a_load_holds_v1(&repo, &slow, &id).await;
    first.await.unwrap();
    assert_eq!(
        version(&*repo, &id).await,
        Some(2),
        "and the cache holds v2"
    );
}

/// Starts a read of `id` (user v1 in the table) through `repo`, waits until its load has read
/// the database, writes v2 while that load holds v1, and asserts that a read started after the
/// write returned — it joins the load in this process — gets v2. Returns the first read.
async fn write_while_a_load_holds_v1<R: UserRepo + Send + Sync + 'static>(
    repo: &Arc<CachedUserRepo<R>>,
    slow: &SlowReads,
    id: &str,
) -> tokio::task::JoinHandle<Option<u64>> {
    let first = {
        let (repo, id) = (repo.clone(), id.to_owned());
        tokio::spawn(async move { version(&*repo, &id).await })
    };
    slow.until_first_read().await;
    repo.upsert(&user(id, 2)).await.unwrap();
    assert_eq!(
        version(&**repo, id).await,
        Some(2),
        "a read after the write"
    );
    first
}

/// A users table whose reads never finish: the loader of another process that holds its lease.
struct StuckReads;

impl UserRepo for StuckReads {
    async fn get(&self, _: &str) -> chatlog_store::Result<Option<User>> {
        std::future::pending().await
    }
    async fn get_many(&self, _: &[String]) -> chatlog_store::Result<Vec<Option<User>>> {
        std::future::pending().await
    }
    async fn upsert(&self, _: &User) -> chatlog_store::Result<()> {
        Ok(())
    }
    async fn delete(&self, _: &str) -> chatlog_store::Result<()> {
        Ok(())
    }
}

/// The load every read of a process shares is not always a locked one: a read tired of waiting
/// for another process's loader reads the database itself, uncached. A read that joins that load
/// after a write returned must not get what it read before the write.
#[tokio::test]
async fn stale_value_never_reaches_a_read_that_joined_a_load_which_gave_up_waiting() {
    let db = cql_users().await;
    let id = unique("u");
    db.upsert(&user(&id, 1)).await.unwrap();
    // Process B locks the entry and never finishes its load (its lease outlives the test).
    let stuck = {
        let config = CacheConfig {
            lease: Duration::from_secs(60),
            mark_ttl: Duration::from_secs(60),
            ..CacheConfig::default()
        };
        let b = cached_with(&Arc::new(StuckReads), redis_connection().await, config);
        let id = id.clone();
        tokio::spawn(async move { b.get(&id).await })
    };
    let mut con = redis_connection().await;
    let key = chatlog_store::keys::user(&id);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let owner: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg("o")
            .query_async(&mut con)
            .await
            .unwrap();
        if owner.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "B never locked the entry");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Process A waits 50 ms for B, then reads v1 itself and holds it for 300 ms.
    let slow = Arc::new(SlowReads::new(&db, Duration::from_millis(300)));
    let config = CacheConfig {
        max_wait: Duration::from_millis(50),
        ..CacheConfig::default()
    };
    let repo = Arc::new(cached_with(&slow, redis_connection().await, config));
    let first = write_while_a_load_holds_v1(&repo, &slow, &id).await;
    assert_eq!(first.await.unwrap(), Some(1), "the read before the write");
    stuck.abort();
}

/// A private `redis-server` for a test that stops or freezes it.
fn private_server() -> TestRedis {
    let port = free_port();
    TestRedis::start(&["--port".into(), port.to_string()], port)
}

/// The version of user `id` as `repo` reads it (`None`: no such user).
async fn version(repo: &impl UserRepo, id: &str) -> Option<u64> {
    repo.get(id).await.unwrap().map(|u| version_of(&u))
}

/// A private Redis with a short command timeout, so reads while it is away degrade quickly.
async fn private_redis(server: &TestRedis) -> chatlog_store::RedisConnection {
    connect_to(server.port).await;
    RedisConfig {
        url: format!("redis://127.0.0.1:{}/", server.port),
        response_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(300),
        ..RedisConfig::default()
    }
    .connect()
    .await
    .expect("private redis")
}

#[tokio::test]
async fn degraded_reads_while_redis_is_down_and_no_stale_value_after_it_restarts_from_a_snapshot() {
    let db = cql_users().await;
    let mut server = private_server();
    let port = server.port;
    let repo = cached(&db, private_redis(&server).await);
    let id = unique("u");
    db.upsert(&user(&id, 1)).await.unwrap();
    assert_eq!(version(&repo, &id).await, Some(1));
    // The snapshot holds the cached v1; then Redis goes down.
    let mut admin = connect_to(port).await;
    let _: String = redis::cmd("SAVE").query_async(&mut admin).await.unwrap();
    server.kill();
    let before = db.db_reads();
    assert_eq!(version(&repo, &id).await, Some(1), "served by CQL");
    // The worst case: a writer that changed the row and died before it could mark the entry.
    db.upsert(&user(&id, 2)).await.unwrap();
    assert_eq!(version(&repo, &id).await, Some(2), "served by CQL");
    assert_eq!(db.db_reads(), before + 2, "both reads went to the database");
    // Back from the snapshot: the entry says v1, filled in another lifetime of Redis.
    server.restart();
    let mut admin = connect_to(port).await;
    let raw = |con: &mut chatlog_store::RedisConnection| {
        let key = chatlog_store::keys::user(&id);
        let mut con = con.clone();
        async move {
            let v: Option<Vec<u8>> = redis::cmd("HGET")
                .arg(key)
                .arg("v")
                .query_async(&mut con)
                .await
                .unwrap();
            v.map(|v| String::from_utf8_lossy(&v).into_owned())
        }
    };
    assert!(
        raw(&mut admin).await.unwrap().contains("\"v1\""),
        "the snapshot brought v1 back"
    );
    // Once the cache answers again it refills from CQL instead of trusting v1.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(version(&repo, &id).await, Some(2));
        if raw(&mut admin).await.is_some_and(|v| v.contains("\"v2\"")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cache never refilled after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(version(&repo, &id).await, Some(2), "a hit now");
}

#[tokio::test]
async fn degraded_while_redis_is_frozen_the_writer_never_reads_what_it_failed_to_mark() {
    let db = cql_users().await;
    let server = private_server();
    let writer = cached(&db, private_redis(&server).await);
    let other = cached(&db, private_redis(&server).await);
    let id = unique("u");
    writer.upsert(&user(&id, 1)).await.unwrap();
    assert_eq!(version(&writer, &id).await, Some(1));
    // Frozen: same lifetime afterwards (no epoch change), so only the kept mark protects.
    server.freeze();
    writer.upsert(&user(&id, 2)).await.unwrap();
    assert_eq!(version(&writer, &id).await, Some(2), "degraded read");
    server.thaw();
    // The writer's own next read sends the kept mark before it reads.
    assert_eq!(version(&writer, &id).await, Some(2));
    // Others: the background retry lands within a few rounds (the documented residual window).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = version(&other, &id).await;
        if v == Some(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the kept mark never landed: other reads {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

mod members {
    use std::collections::BTreeSet;

    use chatlog_schemas::SessionType;
    use chatlog_store::repo::sessions::{
        CachedSessionRepo, CqlSessionRepo, Member, MemberRole, SessionInfo, SessionRepo,
        SessionsConfig,
    };

    use super::*;

    async fn cql_sessions() -> Arc<CqlSessionRepo> {
        let (cql, config) = fresh_keyspace("repo").await;
        let settings = SessionsConfig::default();
        let repo = CqlSessionRepo::new(cql, &config.keyspace, &settings).await;
        Arc::new(repo.expect("sessions repo"))
    }

    fn cached_sessions(
        db: &Arc<CqlSessionRepo>,
        redis: chatlog_store::RedisConnection,
    ) -> CachedSessionRepo<CqlSessionRepo> {
        let cache = Cache::new(redis.into(), CacheConfig::default(), "sessions").expect("cache");
        CachedSessionRepo::new(db.clone(), cache, &SessionsConfig::default())
    }

    fn group(session_id: &str) -> SessionInfo {
        SessionInfo {
            session_id: session_id.to_owned(),
            session_type: SessionType::Group,
            name: "a group".into(),
            owner_id: "owner".into(),
            member_count: 0,
            created_at_ms: 1,
            updated_at_ms: 1,
        }
    }

    fn member(i: usize) -> Member {
        Member {
            user_id: format!("user-{i:06}"),
            role: MemberRole::Member,
            joined_at_ms: i as i64,
        }
    }

    /// Every member of the session, walked page by page with the cursor.
    async fn walk(repo: &impl SessionRepo, sid: &str, limit: usize) -> Vec<Member> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = repo.members(sid, cursor.as_deref(), limit).await.unwrap();
            assert!(page.members.len() <= limit.min(1000));
            all.extend(page.members);
            match page.next {
                Some(next) => cursor = Some(next),
                None => return all,
            }
        }
    }

    #[tokio::test]
    async fn members_of_a_100000_member_group_are_paged_completely_and_counted() {
        let db = cql_sessions().await;
        let repo = cached_sessions(&db, redis_connection().await);
        let sid = unique("big");
        repo.upsert(&group(&sid)).await.unwrap();
        let members: Vec<Member> = (0..100_000).map(member).collect();
        db.import_members(&sid, &members).await.unwrap();
        let walked = walk(&repo, &sid, 1000).await;
        assert_eq!(walked.len(), 100_000, "every member once");
        assert_eq!(walked, members, "in user_id order, nothing altered");
        assert_eq!(repo.get(&sid).await.unwrap().unwrap().member_count, 100_000);
        // Larger than the cache holds: pages come from CQL, bounded by the request.
        assert_eq!(repo.all_members(&sid, 10_000).await.unwrap(), None);
        let one = repo.members(&sid, Some("user-049999"), 1).await.unwrap();
        assert_eq!(one.members, vec![member(50_000)]);
        assert_eq!(one.next.as_deref(), Some("user-050000"));
    }

    #[tokio::test]
    async fn members_of_a_small_group_are_paged_from_the_cached_list_and_follow_changes() {
        let db = cql_sessions().await;
        let repo = cached_sessions(&db, redis_connection().await);
        let sid = unique("small");
        assert!(
            repo.add_member(&sid, &member(1)).await.is_err(),
            "no such session"
        );
        repo.upsert(&group(&sid)).await.unwrap();
        for i in 0..50 {
            assert!(repo.add_member(&sid, &member(i)).await.unwrap());
        }
        assert!(
            !repo.add_member(&sid, &member(7)).await.unwrap(),
            "already a member"
        );
        assert_eq!(
            walk(&repo, &sid, 7).await,
            (0..50).map(member).collect::<Vec<_>>()
        );
        let reads = db.db_reads();
        assert_eq!(walk(&repo, &sid, 7).await.len(), 50);
        assert_eq!(
            db.db_reads(),
            reads,
            "warm: every page from the cached list"
        );
        assert!(repo.remove_member(&sid, "user-000007").await.unwrap());
        assert!(!repo.remove_member(&sid, "user-000007").await.unwrap());
        let after: Vec<Member> = (0..50).filter(|&i| i != 7).map(member).collect();
        assert_eq!(
            walk(&repo, &sid, 7).await,
            after,
            "the removal shows at once"
        );
        assert_eq!(repo.get(&sid).await.unwrap().unwrap().member_count, 49);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn members_count_stays_exact_under_concurrent_adds_and_removes_from_two_processes() {
        let db = cql_sessions().await;
        let a = Arc::new(cached_sessions(&db, redis_connection().await));
        let b = Arc::new(cached_sessions(&db, redis_connection().await));
        let sid = unique("busy");
        a.upsert(&group(&sid)).await.unwrap();
        // 80 users, each added twice (once per process): exactly one add of each applies.
        let adds = (0..160).map(|i| {
            let (repo, sid) = (if i % 2 == 0 { a.clone() } else { b.clone() }, sid.clone());
            tokio::spawn(async move { repo.add_member(&sid, &member(i / 2)).await.unwrap() })
        });
        let applied = futures::future::join_all(adds).await;
        assert_eq!(
            applied.into_iter().filter(|r| *r.as_ref().unwrap()).count(),
            80
        );
        let removes = (0..30).map(|i| {
            let (repo, sid) = (if i % 2 == 0 { a.clone() } else { b.clone() }, sid.clone());
            tokio::spawn(async move { repo.remove_member(&sid, &member(i).user_id).await.unwrap() })
        });
        for r in futures::future::join_all(removes).await {
            assert!(r.unwrap());
        }
        for repo in [&a, &b] {
            assert_eq!(repo.get(&sid).await.unwrap().unwrap().member_count, 50);
            let ids: BTreeSet<String> = walk(&**repo, &sid, 1000)
                .await
                .into_iter()
                .map(|m| m.user_id)
                .collect();
            assert_eq!(ids, (30..80).map(|i| member(i).user_id).collect());
        }
        assert_eq!(
            db.recount(&sid).await.unwrap(),
            50,
            "the kept count is the real one"
        );
    }
}
