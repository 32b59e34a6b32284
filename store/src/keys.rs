//! Redis key formats. Every key of one session carries the hash tag `{<session_id>}` so that all of
//! them live in one Redis Cluster slot and one Lua script may touch them together.

/// The prefix of every chatlog key.
pub const PREFIX: &str = "chatlog";

/// The ZSET window of a session's newest messages: score = seq, member = Avro single-object bytes.
pub fn window(session_id: &str) -> String {
    format!("{PREFIX}:{{{session_id}}}:win")
}

/// The epoch ([`crate::epoch`]) a session's window was written in: a window of another epoch is
/// emptied by the next append and started again from the table (see
/// [`crate::window::APPEND_LUA`]).
pub fn window_epoch(session_id: &str) -> String {
    format!("{PREFIX}:{{{session_id}}}:wep")
}

/// The `SCAN … MATCH` pattern of every session's window key ([`window`]).
pub fn window_pattern() -> String {
    window("*")
}

/// The session id of a window key ([`window`]); `None` for any other key.
pub fn session_of_window(key: &str) -> Option<&str> {
    key.strip_prefix(PREFIX)?
        .strip_prefix(":{")?
        .strip_suffix("}:win")
        .filter(|s| !s.is_empty())
}

/// The seq allocator's hash of a session: `cur` (last handed out) and `max` (reserved ceiling).
pub fn seq(session_id: &str) -> String {
    format!("{PREFIX}:{{{session_id}}}:seq")
}

/// The idempotency record of one `(session_id, sender_id, client_msg_id)`: the seq, msg_id and
/// fingerprint handed out. The sender is length-prefixed, so no pair of ids can spell another
/// pair's key (`a:b` + `c` vs `a` + `b:c`).
pub fn client_msg(session_id: &str, sender_id: &str, client_msg_id: &str) -> String {
    format!(
        "{PREFIX}:{{{session_id}}}:cmid:{}:{sender_id}:{client_msg_id}",
        sender_id.len()
    )
}

/// The cache entry of a user ([`crate::repo::users`]); the user's keys share the tag `{u:<id>}`.
pub fn user(user_id: &str) -> String {
    format!("{PREFIX}:{{u:{user_id}}}:user")
}

/// The cache entry of a session's row ([`crate::repo::sessions`]).
pub fn session(session_id: &str) -> String {
    format!("{PREFIX}:{{{session_id}}}:info")
}

/// The cache entry of a session's member list ([`crate::repo::sessions`]).
pub fn members(session_id: &str) -> String {
    format!("{PREFIX}:{{{session_id}}}:members")
}

/// The cache entry of a user's conversation list and read state ([`crate::repo`]).
pub fn conversations(user_id: &str) -> String {
    format!("{PREFIX}:{{u:{user_id}}}:convs")
}

/// A session's latest message (max seq, its time, the message), kept by the consumer.
pub fn latest(session_id: &str) -> String {
    format!("{PREFIX}:{{{session_id}}}:latest")
}

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag — the text between the first
/// `{` and the next `}` when that is not empty — or of the whole key, modulo 16384.
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(bytes)) % 16384
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_session_share_a_hash_tag() {
        let tag = |k: &str| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_owned();
        assert_eq!(tag(&window("s1")), "{s1}");
        assert_eq!(tag(&seq("s1")), "{s1}");
        assert_eq!(tag(&window_epoch("s1")), "{s1}");
        assert_eq!(tag(&client_msg("s1", "u", "c-9")), "{s1}");
        assert_eq!(tag(&session("s1")), "{s1}");
        assert_eq!(tag(&members("s1")), "{s1}");
        assert_eq!(tag(&latest("s1")), "{s1}");
        assert_eq!(tag(&user("u1")), "{u:u1}");
        assert_eq!(tag(&conversations("u1")), "{u:u1}");
        assert_ne!(client_msg("s", "a:b", "c"), client_msg("s", "a", "b:c"));
        assert_eq!(session_of_window(&window("s1")), Some("s1"));
        assert_eq!(session_of_window(&window_epoch("s1")), None);
        assert_eq!(window_pattern(), window("*"));
    }

    #[test]
    fn slots_follow_the_cluster_spec() {
        // The Redis Cluster specification's test vector: CRC16("123456789") = 0x31C3.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot("123456789"), 12739, "0x31C3 is below 16384");
        assert_eq!(slot("a{user1000}.following"), slot("b{user1000}.followers"));
        assert_eq!(
            slot("foo{}{bar}"),
            slot("foo{}{bar}"),
            "empty tag: the whole key"
        );
        assert_ne!(slot("foo{}{bar}"), slot("bar"));
        assert_eq!(slot(&window("s1")), slot(&seq("s1")));
    }
}
