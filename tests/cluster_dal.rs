//! The Smart DAL's cached repositories on the cluster stack (`dev/cluster.sh up`: a Redis Cluster
//! of three masters with a replica each) over the real Cassandra of `dev/stack.sh`: users,
//! sessions and members, read state and conversation lists, and `Dal::leave`, with their keys
//! spread over every master.
//!
//! What a Cluster changes for the repositories is every call that spans keys: a `get_many`'s
//! probe, the marks of a write, a conversation list's probe of its sessions' latests — each split
//! into one call per slot. The database's read counters (`db_reads`) tell a cache hit from a load:
//! a warm read that silently fell back to the database (a refused cross-slot call degrades to it)
//! fails here. No test fails a node over (tests/cluster.rs does, one at a time, in its own
//! binary).

use std::sync::Arc;

use chatlog::{cluster, fresh_keyspace, now_ms, unique};
use chatlog_schemas::SessionType;
use chatlog_store::repo::conversations::{ConversationPage, ConversationRepo};
use chatlog_store::repo::latest::{LatestRow, LatestWriter};
use chatlog_store::repo::sessions::{Member, MemberPage, MemberRole, SessionInfo, SessionRepo};
use chatlog_store::repo::users::{User, UserRepo, UserStatus};
use chatlog_store::repo::{Dal, DalConfig};
use chatlog_store::{RedisConnection, keys, window};
use scylla::client::session::Session;

/// A keyspace and the repositories on it, cached in the Redis Cluster.
struct World {
    session: Arc<Session>,
    keyspace: String,
    dal: Dal,
}

impl World {
    async fn new(name: &str) -> World {
        let (session, cql) = fresh_keyspace(name).await;
        let redis = cluster::redis_connection().await;
        assert!(
            matches!(redis, RedisConnection::Cluster(_)),
            "a Redis Cluster connection"
        );
        let dal = Dal::new(
            session.clone(),
            &cql.keyspace,
            redis.into(),
            DalConfig::default(),
        )
        .await
        .expect("repositories on the cluster");
        World {
            session,
            keyspace: cql.keyspace,
            dal,
        }
    }

    /// Writes each session's latest to `session_latest` as the consumer's CQL stage does (Redis
    /// is left to the readers, which fill it).
    async fn write_latest(&self, rows: &[LatestRow]) {
        LatestWriter::new(self.session.clone(), &self.keyspace)
            .await
            .expect("latest writer")
            .write(rows)
            .await
            .expect("write session_latest");
    }
}

/// The ports of the masters serving `keys`, one per key.
async fn masters_of(keys: &[String]) -> Vec<u16> {
    let mut ports = Vec::with_capacity(keys.len());
    for key in keys {
        ports.push(cluster::master_of(key).await.port);
    }
    ports
}

/// How many different masters serve `keys`.
async fn distinct_masters(keys: &[String]) -> usize {
    let mut ports = masters_of(keys).await;
    ports.sort_unstable();
    ports.dedup();
    ports.len()
}

/// Field `field` of the hash `key`, read over a plain connection to the master that serves its
/// slot (a key of another slot would answer `MOVED`): what lives there.
async fn field_on_master(key: &str, field: &str) -> Option<Vec<u8>> {
    let master = cluster::master_of(key).await;
    let mut con = cluster::connect_node(&master).await;
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query_async(&mut con)
        .await
        .unwrap_or_else(|e| panic!("HGET {key} {field} on {}: {e}", master.port))
}

/// The cached value of the cache entry `key` on its master (`v`: `+<json>`, or `-` for "the
/// database has none").
async fn cached_value(key: &str) -> Option<Vec<u8>> {
    field_on_master(key, "v").await
}

fn user(user_id: &str, version: u64) -> User {
    User {
        user_id: user_id.to_owned(),
        nickname: format!("v{version}"),
        avatar_url: format!("https://example.invalid/{user_id}.png"),
        status: UserStatus::Active,
        ext: [("version".to_owned(), version.to_string())].into(),
        updated_at_ms: 1_700_000_000_000 + version as i64,
    }
}

fn group(session_id: &str, k: usize) -> SessionInfo {
    SessionInfo {
        session_id: session_id.to_owned(),
        session_type: SessionType::Group,
        name: format!("group {k}"),
        owner_id: String::new(),
        member_count: 0,
        created_at_ms: 1_000 + k as i64,
        updated_at_ms: 2_000 + k as i64,
    }
}

fn member(user_id: &str, joined_at_ms: i64) -> Member {
    Member {
        user_id: user_id.to_owned(),
        role: MemberRole::Member,
        joined_at_ms,
    }
}

/// Every page of `session_id`'s members, walked with the cursor (`limit` per page).
async fn walk(repo: &impl SessionRepo, session_id: &str, limit: usize) -> Vec<MemberPage> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let page = repo
            .members(session_id, cursor.as_deref(), limit)
            .await
            .expect("members page");
        assert!(page.members.len() <= limit, "{page:?}");
        cursor.clone_from(&page.next);
        pages.push(page);
        if cursor.is_none() {
            return pages;
        }
    }
    panic!("the walk of {session_id} did not end");
}

fn members_of(pages: &[MemberPage]) -> Vec<Member> {
    pages.iter().flat_map(|p| p.members.clone()).collect()
}

/// The session's latest: seq `seq` at `time_us`, its message `avro-<session>`.
fn latest_row(session_id: &str, seq: i64, time_us: i64) -> LatestRow {
    LatestRow {
        session_id: session_id.to_owned(),
        seq,
        version: time_us,
        member: window::member(time_us, format!("avro-{session_id}").as_bytes()),
    }
}

/// `(session, pinned, muted, has_read_seq, min_seq, max_seq, unread)` of each entry, in order.
type Shown = (String, bool, bool, i64, i64, i64, i64);

fn shown(page: &ConversationPage) -> Vec<Shown> {
    page.conversations
        .iter()
        .map(|c| {
            (
                c.session_id.clone(),
                c.pinned,
                c.muted,
                c.has_read_seq,
                c.min_seq,
                c.max_seq,
                c.unread,
            )
        })
        .collect()
}

/// Users on all three masters: a cold `get_many` loads each user once (an absent one too) and
/// fills its entry on the master that serves it; the warm one reads no row; a write reloads only
/// the written user, a delete leaves it absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_dal_users_get_many_across_every_master_then_from_the_cache() {
    let w = World::new("cluster_dal_users").await;
    let users = &w.dal.users;
    let db = users.inner();
    // Two per master, grouped by master: the last one never written.
    let ids = cluster::ids_on_every_master("cdu", 2, keys::user).await;
    let entry_keys: Vec<String> = ids.iter().map(|id| keys::user(id)).collect();
    assert_eq!(distinct_masters(&entry_keys).await, 3, "{ids:?}");
    let mut expected: Vec<Option<User>> = ids
        .iter()
        .map(|id| Some(user(id, 1)))
        .take(ids.len() - 1)
        .chain([None])
        .collect();
    for u in expected.iter().flatten() {
        users.upsert(u).await.expect("upsert");
    }
    assert_eq!(db.db_reads(), 0);

    assert_eq!(users.get_many(&ids).await.unwrap(), expected, "cold");
    assert_eq!(db.db_reads(), 6, "cold: one database read per user");
    for (key, want) in entry_keys.iter().zip(&expected) {
        let v = cached_value(key)
            .await
            .unwrap_or_else(|| panic!("{key} not filled on its master"));
        match want {
            Some(u) => {
                assert_eq!(v.first(), Some(&b'+'), "{key}");
                let cached: User = serde_json::from_slice(&v[1..]).expect("a cached user");
                assert_eq!(&cached, u, "{key}");
            }
            None => assert_eq!(v, b"-", "{key}: cached as absent"),
        }
    }

    assert_eq!(users.get_many(&ids).await.unwrap(), expected, "warm");
    let scrambled = [
        ids[4].clone(),
        ids[0].clone(),
        ids[5].clone(),
        ids[4].clone(),
    ];
    assert_eq!(
        users.get_many(&scrambled).await.unwrap(),
        [4, 0, 5, 4].map(|i| expected[i].clone()),
        "in the order asked"
    );
    for (id, want) in ids.iter().zip(&expected) {
        assert_eq!(&users.get(id).await.unwrap(), want, "{id}");
    }
    assert_eq!(
        db.db_reads(),
        6,
        "warm: every user a cache hit, no row read"
    );

    // A new version of one user and the absent one created: only those two are read again.
    users.upsert(&user(&ids[0], 2)).await.unwrap();
    users.upsert(&user(&ids[5], 1)).await.unwrap();
    expected[0] = Some(user(&ids[0], 2));
    expected[5] = Some(user(&ids[5], 1));
    assert_eq!(
        users.get_many(&ids).await.unwrap(),
        expected,
        "after upserts"
    );
    assert_eq!(db.db_reads(), 8, "the two written users reloaded, no other");
    assert_eq!(users.get_many(&ids).await.unwrap(), expected);
    assert_eq!(db.db_reads(), 8);

    // Deleted: absent at once, and cached as absent on its master.
    users.delete(&ids[2]).await.unwrap();
    expected[2] = None;
    assert_eq!(users.get(&ids[2]).await.unwrap(), None, "deleted");
    assert_eq!(db.db_reads(), 9);
    assert_eq!(
        cached_value(&entry_keys[2]).await.as_deref(),
        Some(&b"-"[..])
    );
    assert_eq!(
        users.get_many(&ids).await.unwrap(),
        expected,
        "after delete"
    );
    assert_eq!(db.db_reads(), 9);
    // The table agrees with what the cache served.
    assert_eq!(db.get_many(&ids).await.unwrap(), expected, "the table");
}

/// Sessions on all three masters, members joined through the Dal: a `get_many` of them (and an
/// unknown one) reads each row once and then none, with the exact member counts; each member
/// list is loaded once and paged from the cached list, in `user_id` order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_dal_sessions_get_many_and_members_paged_from_the_cache() {
    let w = World::new("cluster_dal_sessions").await;
    let sessions = &w.dal.sessions;
    let db = sessions.inner();
    let sids = cluster::sessions_on_every_master("cds", 2).await;
    let member_keys: Vec<String> = sids.iter().map(|s| keys::members(s)).collect();
    assert_eq!(distinct_masters(&member_keys).await, 3, "{sids:?}");
    let base = unique("cds_user");
    let users: Vec<String> = (0..sids.len() + 2)
        .map(|i| format!("{base}-m{i:02}"))
        .collect();
    // Session k: members 0..k+2.
    let members_of_session = |k: usize| -> Vec<Member> {
        (0..k + 2)
            .map(|i| member(&users[i], 10 * i as i64))
            .collect()
    };
    for (k, sid) in sids.iter().enumerate() {
        sessions.upsert(&group(sid, k)).await.expect("upsert");
        for m in members_of_session(k) {
            assert!(w.dal.join(sid, &m).await.expect("join"), "{sid}");
        }
    }
    assert!(
        !w.dal
            .join(&sids[0], &member(&users[0], 0))
            .await
            .expect("join again"),
        "already a member"
    );

    let mut ask = sids.clone();
    ask.push(unique("cds_nobody"));
    let mut expected: Vec<Option<SessionInfo>> = sids
        .iter()
        .enumerate()
        .map(|(k, sid)| {
            Some(SessionInfo {
                member_count: k as i64 + 2,
                ..group(sid, k)
            })
        })
        .collect();
    expected.push(None);
    let before = db.db_reads();
    assert_eq!(sessions.get_many(&ask).await.unwrap(), expected, "cold");
    assert_eq!(db.db_reads() - before, 7, "cold: one read per session");
    assert_eq!(sessions.get_many(&ask).await.unwrap(), expected, "warm");
    assert_eq!(db.db_reads() - before, 7, "warm: every session a cache hit");

    for (k, sid) in sids.iter().enumerate() {
        let before = db.db_reads();
        let pages = walk(&**sessions, sid, 3).await;
        assert_eq!(members_of(&pages), members_of_session(k), "{sid}");
        assert_eq!(pages.len(), (k + 2).div_ceil(3), "{sid}: pages of 3");
        assert_eq!(
            db.db_reads() - before,
            1,
            "{sid}: the list loaded once, every page cut from it"
        );
    }
    let before = db.db_reads();
    for (k, sid) in sids.iter().enumerate() {
        assert_eq!(
            members_of(&walk(&**sessions, sid, 2).await),
            members_of_session(k)
        );
    }
    let page = sessions
        .members(&sids[5], Some(&users[2]), 2)
        .await
        .unwrap();
    assert_eq!(
        page,
        MemberPage {
            members: vec![member(&users[3], 30), member(&users[4], 40)],
            next: Some(users[4].clone()),
        },
        "a page after a cursor"
    );
    assert_eq!(
        db.db_reads(),
        before,
        "warm: every page from the cached lists"
    );

    // A member added shows at once, in order, and the count follows.
    let late = format!("{base}-m00a");
    assert!(w.dal.join(&sids[1], &member(&late, 5)).await.unwrap());
    let mut want = members_of_session(1);
    want.insert(1, member(&late, 5));
    assert_eq!(members_of(&walk(&**sessions, &sids[1], 3).await), want);
    assert_eq!(
        sessions
            .get(&sids[1])
            .await
            .unwrap()
            .map(|s| s.member_count),
        Some(4)
    );
}

/// One user's conversations on all three masters: unread counts from the sessions' latests
/// (filled into Redis on each session's master, then hits), mark_read raised in place in the
/// cached list (no reload) and never backward, pin and mute, clear history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_dal_read_state_unread_pin_mute_and_clear_history() {
    let w = World::new("cluster_dal_reads").await;
    let convs = &w.dal.conversations;
    let (lists, latests) = (convs.inner(), convs.latest());
    let sids = cluster::sessions_on_every_master("cdr", 2).await;
    let latest_keys: Vec<String> = sids.iter().map(|s| keys::latest(s)).collect();
    assert_eq!(distinct_masters(&latest_keys).await, 3, "{sids:?}");
    let me = unique("cdr_user");
    for (k, sid) in sids.iter().enumerate() {
        w.dal.sessions.upsert(&group(sid, k)).await.unwrap();
        w.dal
            .join(sid, &member(&me, 1_000 + k as i64))
            .await
            .unwrap();
    }
    // Session k: latest seq 10 + k, the newer the smaller k (the list's order is `sids`).
    let base_us = now_ms() * 1000;
    let rows: Vec<LatestRow> = sids
        .iter()
        .enumerate()
        .map(|(k, sid)| latest_row(sid, 10 + k as i64, base_us - 1000 * k as i64))
        .collect();
    w.write_latest(&rows).await;
    // (pinned, muted, has_read_seq, min_seq) per session.
    let mut state = vec![(false, false, 0i64, 0i64); sids.len()];
    let expected = |state: &[(bool, bool, i64, i64)], order: &[usize]| -> Vec<Shown> {
        order
            .iter()
            .map(|&k| {
                let (pinned, muted, read, min) = state[k];
                let max_seq = 10 + k as i64;
                let unread = (max_seq - read.max(min)).max(0);
                (sids[k].clone(), pinned, muted, read, min, max_seq, unread)
            })
            .collect()
    };
    let in_order: Vec<usize> = (0..sids.len()).collect();

    let cold = convs.conversations(&me, 100, None).await.unwrap();
    assert_eq!((cold.total, cold.next.as_deref()), (6, None));
    assert_eq!(shown(&cold), expected(&state, &in_order), "cold");
    for c in &cold.conversations {
        let latest = c.latest.as_ref().expect("a latest");
        assert_eq!(latest.avro, format!("avro-{}", c.session_id).into_bytes());
    }
    assert_eq!(lists.db_reads(), 1, "the list read once");
    assert_eq!(latests.db_reads(), 6, "each session's latest read once");
    for (key, row) in latest_keys.iter().zip(&rows) {
        assert_eq!(
            field_on_master(key, "s").await,
            Some(row.seq.to_string().into_bytes()),
            "{key} filled on its master"
        );
    }
    let warm = convs.conversations(&me, 100, None).await.unwrap();
    assert_eq!(warm, cold, "warm");
    assert_eq!(
        (lists.db_reads(), latests.db_reads()),
        (1, 6),
        "warm: the list and every latest from Redis"
    );

    // Read state: raised in place in the cached list on the user's master.
    convs.mark_read(&me, &sids[0], 4).await.unwrap();
    convs.mark_read(&me, &sids[1], 100).await.unwrap();
    convs.mark_read(&me, &sids[2], 9).await.unwrap();
    convs.mark_read(&me, &sids[2], 3).await.unwrap();
    state[0].2 = 4;
    state[1].2 = 100;
    state[2].2 = 9;
    let page = convs.conversations(&me, 100, None).await.unwrap();
    assert_eq!(shown(&page), expected(&state, &in_order), "after mark_read");
    assert_eq!(
        page.conversations
            .iter()
            .map(|c| c.unread)
            .collect::<Vec<_>>(),
        [6, 0, 3, 13, 14, 15]
    );
    assert_eq!(
        (lists.db_reads(), latests.db_reads()),
        (1, 6),
        "mark_read updated the cached list in place"
    );
    let in_db = lists.memberships(&me).await.unwrap();
    for (k, sid) in sids.iter().enumerate() {
        let m = in_db
            .list
            .iter()
            .find(|m| &m.session_id == sid)
            .expect("a member");
        assert_eq!(
            m.has_read_seq, state[k].2,
            "the table's has_read_seq of {sid}"
        );
    }
    let reads = lists.db_reads();

    // Pin and mute: the list is marked deleted and read again once; the pinned one comes first.
    convs.set_pinned(&me, &sids[5], true).await.unwrap();
    convs.set_muted(&me, &sids[3], true).await.unwrap();
    state[5].0 = true;
    state[3].1 = true;
    let pinned_first = [5, 0, 1, 2, 3, 4];
    let page = convs.conversations(&me, 100, None).await.unwrap();
    assert_eq!(
        shown(&page),
        expected(&state, &pinned_first),
        "pinned, muted"
    );
    assert_eq!(lists.db_reads(), reads + 1, "reloaded once");
    assert_eq!(
        convs.conversations(&me, 100, None).await.unwrap(),
        page,
        "warm again"
    );
    assert_eq!(lists.db_reads(), reads + 1);
    let two = convs.conversations(&me, 2, None).await.unwrap();
    assert_eq!(shown(&two), expected(&state, &pinned_first[..2]), "a page");
    let rest = convs
        .conversations(&me, 100, two.next.as_deref())
        .await
        .unwrap();
    assert_eq!(
        shown(&rest),
        expected(&state, &pinned_first[2..]),
        "the rest"
    );

    // Clear history: min_seq rises to the session's latest (Redis's), never lowers.
    let reads = lists.db_reads();
    assert_eq!(convs.clear_history(&me, &sids[4]).await.unwrap(), 14);
    convs.clear_history_to(&me, &sids[4], 5).await.unwrap();
    convs.clear_history_to(&me, &sids[0], 8).await.unwrap();
    state[4].3 = 14;
    state[0].3 = 8;
    assert_eq!(convs.min_seq(&me, &sids[4]).await.unwrap(), 14);
    assert_eq!(lists.min_seq(&me, &sids[4]).await.unwrap(), 14, "the table");
    assert_eq!(lists.min_seq(&me, &sids[0]).await.unwrap(), 8, "the table");
    let page = convs.conversations(&me, 100, None).await.unwrap();
    assert_eq!(
        shown(&page),
        expected(&state, &pinned_first),
        "after clear history"
    );
    assert_eq!(
        (
            page.conversations[1].session_id.as_str(),
            page.conversations[1].unread
        ),
        (sids[0].as_str(), 2),
        "cleared above what was read"
    );
    assert_eq!(
        lists.db_reads(),
        reads,
        "clear history updated the list in place"
    );

    // Unpinned and unmuted: back to the order of activity.
    convs.set_pinned(&me, &sids[5], false).await.unwrap();
    convs.set_muted(&me, &sids[3], false).await.unwrap();
    state[5].0 = false;
    state[3].1 = false;
    let page = convs.conversations(&me, 100, None).await.unwrap();
    assert_eq!(shown(&page), expected(&state, &in_order), "unpinned");
}

/// `Dal::leave` of a session whose keys live on another master than the user's list: the list
/// stops showing it and the member list and count drop the user, on both sides at once (warm
/// entries included); a second leave is a no-op; a re-join continues from the kept read state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_dal_leave_updates_the_member_list_and_the_conversation_list() {
    let w = World::new("cluster_dal_leave").await;
    let dal = &w.dal;
    let sids = cluster::sessions_on_every_master("cdl", 1).await;
    let base = unique("cdl_user");
    let (me, other) = (format!("{base}-a"), format!("{base}-b"));
    for (k, sid) in sids.iter().enumerate() {
        dal.sessions.upsert(&group(sid, k)).await.unwrap();
        assert!(dal.join(sid, &member(&me, 100)).await.unwrap());
        assert!(dal.join(sid, &member(&other, 200)).await.unwrap());
    }
    let rows: Vec<LatestRow> = sids
        .iter()
        .enumerate()
        .map(|(k, sid)| latest_row(sid, 5, now_ms() * 1000 - k as i64))
        .collect();
    w.write_latest(&rows).await;
    // A session whose master is not the one of `me`'s list.
    let mine = cluster::master_of(&keys::conversations(&me)).await.port;
    let session_masters =
        masters_of(&sids.iter().map(|s| keys::members(s)).collect::<Vec<_>>()).await;
    let k = session_masters
        .iter()
        .position(|&p| p != mine)
        .expect("three sessions on three masters");
    let gone = &sids[k];
    dal.conversations.mark_read(&me, gone, 3).await.unwrap();
    dal.conversations
        .clear_history_to(&me, gone, 1)
        .await
        .unwrap();

    // Everything warm first: the leave must mark the cached entries, not find them cold.
    let both = vec![member(&me, 100), member(&other, 200)];
    for sid in &sids {
        assert_eq!(members_of(&walk(&*dal.sessions, sid, 10).await), both);
    }
    let counts = |infos: Vec<Option<SessionInfo>>| -> Vec<i64> {
        infos
            .into_iter()
            .map(|s| s.expect("a session").member_count)
            .collect()
    };
    assert_eq!(
        counts(dal.sessions.get_many(&sids).await.unwrap()),
        [2, 2, 2]
    );
    let ids_of = |page: &ConversationPage| -> Vec<String> {
        let mut ids: Vec<String> = page
            .conversations
            .iter()
            .map(|c| c.session_id.clone())
            .collect();
        ids.sort();
        ids
    };
    let mut all = sids.clone();
    all.sort();
    let page = dal
        .conversations
        .conversations(&me, 100, None)
        .await
        .unwrap();
    assert_eq!(ids_of(&page), all);
    let member_reads = dal.sessions.inner().db_reads();
    assert_eq!(members_of(&walk(&*dal.sessions, gone, 10).await), both);
    assert_eq!(dal.sessions.inner().db_reads(), member_reads, "warm");

    assert!(dal.leave(gone, &me).await.unwrap(), "was a member");
    assert!(!dal.leave(gone, &me).await.unwrap(), "no longer a member");

    assert_eq!(
        members_of(&walk(&*dal.sessions, gone, 10).await),
        vec![member(&other, 200)],
        "the member list drops the user at once"
    );
    let mut want_counts = vec![2, 2, 2];
    want_counts[k] = 1;
    assert_eq!(
        counts(dal.sessions.get_many(&sids).await.unwrap()),
        want_counts
    );
    assert_eq!(
        dal.sessions.inner().all_members(gone, 10).await.unwrap(),
        Some(vec![member(&other, 200)]),
        "the table"
    );
    let page = dal
        .conversations
        .conversations(&me, 100, None)
        .await
        .unwrap();
    let mut rest = all.clone();
    rest.retain(|s| s != gone);
    assert_eq!((ids_of(&page), page.total), (rest, 2), "the list drops it");
    let theirs = dal
        .conversations
        .conversations(&other, 100, None)
        .await
        .unwrap();
    assert_eq!(ids_of(&theirs), all, "the other member keeps it");
    // Not a member any more: the table's word, which keeps the read state.
    assert_eq!(dal.conversations.min_seq(&me, gone).await.unwrap(), 1);

    // Back again: the read state kept, so 2 unread of 5.
    assert!(dal.join(gone, &member(&me, 300)).await.unwrap());
    let page = dal
        .conversations
        .conversations(&me, 100, None)
        .await
        .unwrap();
    assert_eq!(ids_of(&page), all);
    let back = page
        .conversations
        .iter()
        .find(|c| &c.session_id == gone)
        .expect("re-joined");
    assert_eq!(
        (
            back.has_read_seq,
            back.min_seq,
            back.max_seq,
            back.unread,
            back.joined_at_ms
        ),
        (3, 1, 5, 2, 300)
    );
    assert_eq!(
        counts(dal.sessions.get_many(&sids).await.unwrap()),
        [2, 2, 2]
    );
}
