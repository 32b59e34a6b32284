//! Logic's calls to the Smart DAL, end to end: why it exists is to show, in one linear program,
//! every repository call Logic makes besides sending (the producer) and reading history — each
//! served from Redis when warm, from CQL otherwise, never stale after a write returns.
//!
//! Steps: migrations and topics; a real `chatlog-consumer` (it keeps each session's latest
//! message, which the conversation list reads); users created and authenticated through the
//! cached user repository (the second lookup is a cache hit); a group created and joined by three
//! users; its members paged; three messages sent through the producer; Bob's conversation list
//! with its unread count once the consumer has them; Bob marks them read; the count drops to 0.
//!
//! Run against the local stack: `dev/stack.sh up; eval "$(dev/stack.sh env)"; cargo build
//! --release -p chatlog-consumer; cargo run --release --example dal`.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatlog_producer::{NewMessage, Producer};
use chatlog_schemas::{ContentType, SessionType};
use chatlog_store::repo::conversations::ConversationRepo;
use chatlog_store::repo::sessions::{Member, MemberRole, SessionInfo, SessionRepo};
use chatlog_store::repo::users::{User, UserRepo, UserStatus};
use chatlog_store::repo::{Dal, DalConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let consumer_bin = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/release/chatlog-consumer".into());
    let (keyspace, topic) = ("chatlog", "chat.messages");
    let cql = chatlog::cql_config(keyspace);
    let session = Arc::new(cql.connect().await?);
    chatlog_store::migrate::apply(&session, &cql).await?;
    chatlog::ensure_topic(topic, 8).await;
    chatlog::ensure_topic("chat.messages.dlq", 1).await;
    let mut consumer = Command::new(&consumer_bin)
        .args(["--bootstrap-servers", &chatlog::kafka_bootstrap()])
        .args(["--cql-nodes", &chatlog::cql_nodes().join(",")])
        .args(["--redis-url", &chatlog::redis_url()])
        .args(["--http-listen", "127.0.0.1:0"])
        .args(["--transactional-id", "chatlog-dal-example-0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {consumer_bin} (build it first): {e}"))?;

    // Startup: every repository, cached, over one CQL session and one Redis.
    let redis = chatlog::redis_connection().await;
    let dal = Dal::new(
        session.clone(),
        keyspace,
        redis.clone().into(),
        DalConfig::default(),
    )
    .await?;
    let run = chatlog::unique("dal");
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|name| format!("{run}-{name}"));
    for id in [&alice, &bob, &carol] {
        dal.users
            .upsert(&User {
                user_id: id.clone(),
                nickname: id.rsplit('-').next().unwrap_or(id).to_owned(),
                avatar_url: String::new(),
                status: UserStatus::Active,
                ext: Default::default(),
                updated_at_ms: chatlog::now_ms(),
            })
            .await?;
    }

    // Authentication: a user lookup per request; the first fills the cache, the next are hits.
    for _ in 0..3 {
        let user = dal.users.get(&bob).await?.expect("bob exists");
        assert_eq!(user.status, UserStatus::Active);
    }
    println!(
        "authenticated bob 3 times: {} database read(s)",
        dal.users.inner().db_reads()
    );

    // A group and its members: each join updates the member list and the conversation list.
    let group = format!("{run}-group");
    dal.sessions
        .upsert(&SessionInfo {
            session_id: group.clone(),
            session_type: SessionType::Group,
            name: "DAL example".into(),
            owner_id: alice.clone(),
            member_count: 0,
            created_at_ms: chatlog::now_ms(),
            updated_at_ms: chatlog::now_ms(),
        })
        .await?;
    for (id, role) in [
        (&alice, MemberRole::Owner),
        (&bob, MemberRole::Member),
        (&carol, MemberRole::Member),
    ] {
        let member = Member {
            user_id: id.clone(),
            role,
            joined_at_ms: chatlog::now_ms(),
        };
        dal.join(&group, &member).await?;
    }
    let first = dal.sessions.members(&group, None, 2).await?;
    let rest = dal
        .sessions
        .members(&group, first.next.as_deref(), 2)
        .await?;
    let info = dal.sessions.get(&group).await?.expect("the group exists");
    println!(
        "group {group}: {} members, pages {:?} then {:?}",
        info.member_count,
        first.members.iter().map(|m| &m.user_id).collect::<Vec<_>>(),
        rest.members.iter().map(|m| &m.user_id).collect::<Vec<_>>(),
    );

    // Alice sends three messages (the producer), the consumer persists them and the latest.
    let producer = Producer::new(
        chatlog::producer_config(topic),
        session.clone(),
        keyspace,
        redis,
    )
    .await?;
    let mut last_seq = 0;
    for i in 1..=3 {
        let sent = producer
            .send(NewMessage {
                client_msg_id: format!("{run}-c{i}"),
                session_id: group.clone(),
                session_type: SessionType::Group,
                sender_id: alice.clone(),
                content_type: ContentType::Text,
                content: format!("hello #{i}").into_bytes(),
                send_time_ms: chatlog::now_ms(),
                ext: Default::default(),
            })
            .await?;
        last_seq = sent.seq;
    }
    producer.close(Duration::from_secs(10)).await?;

    // Bob opens the app: his conversation list, with the unread count once persisted.
    let deadline = Instant::now() + Duration::from_secs(60);
    let entry = loop {
        let page = dal.conversations.conversations(&bob, 20, None).await?;
        let entry = page
            .conversations
            .into_iter()
            .find(|c| c.session_id == group);
        match entry {
            Some(c) if c.max_seq == last_seq => break c,
            _ if Instant::now() > deadline => anyhow::bail!("the consumer never persisted them"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    println!(
        "bob's list: {} — latest seq {}, unread {}",
        entry.session_id, entry.max_seq, entry.unread
    );

    // Bob reads them: unread drops to 0 (mark_read only ever moves forward).
    dal.conversations.mark_read(&bob, &group, last_seq).await?;
    let page = dal.conversations.conversations(&bob, 20, None).await?;
    let entry = page
        .conversations
        .iter()
        .find(|c| c.session_id == group)
        .expect("still listed");
    println!("bob marked seq {last_seq} read: unread {}", entry.unread);

    let _ = chatlog::signal(consumer.id(), "-TERM");
    consumer.wait()?;
    Ok(())
}
