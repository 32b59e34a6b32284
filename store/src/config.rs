//! How to reach the CQL database and Redis. Both structs reject unknown keys, so a typo in a config
//! file is an error instead of a silently ignored setting.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::connection::RedisConnection;
use crate::security::TlsFiles;
use crate::{Error, Result, Secret};

/// The CQL database (ScyllaDB in production, Cassandra locally).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CqlConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// The keyspace that holds chatlog's tables.
    pub keyspace: String,
    /// The keyspace's replication map as CQL, used only when the migrator creates the keyspace.
    /// Locally `{'class': 'SimpleStrategy', 'replication_factor': 1}`; in production
    /// `{'class': 'NetworkTopologyStrategy', '<dc>': 3}`.
    pub replication: String,
    /// Username for password authentication (none when empty).
    pub username: String,
    /// Password for password authentication.
    pub password: Secret,
    /// Timeout of one request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Timeout of establishing a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// TLS to the nodes (none: plaintext).
    pub tls: Option<TlsFiles>,
}

impl Default for CqlConfig {
    fn default() -> Self {
        CqlConfig {
            nodes: vec!["127.0.0.1:9042".to_owned()],
            keyspace: "chatlog".to_owned(),
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".to_owned(),
            username: String::new(),
            password: Secret::default(),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            tls: None,
        }
    }
}

impl CqlConfig {
    /// Checks what the driver cannot: a keyspace name that is safe to splice into CQL text.
    pub fn validate(&self) -> Result<()> {
        if self.nodes.is_empty() {
            return Err(Error::Config("cql.nodes is empty".into()));
        }
        let ks = &self.keyspace;
        let ok = !ks.is_empty()
            && ks.len() <= 48
            && ks.starts_with(|c: char| c.is_ascii_alphabetic())
            && ks.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(Error::Config(format!(
                "cql.keyspace {ks:?} must be 1-48 characters of [A-Za-z0-9_] starting with a letter"
            )));
        }
        Ok(())
    }

    /// Opens a driver session to the configured nodes (no keyspace selected: every statement names
    /// it, so one session can also run the migrations that create it).
    pub async fn connect(&self) -> Result<scylla::client::session::Session> {
        self.validate()?;
        let mut builder = scylla::client::session_builder::SessionBuilder::new()
            .known_nodes(&self.nodes)
            .connection_timeout(self.connect_timeout);
        if !self.username.is_empty() {
            builder = builder.user(&self.username, self.password.expose());
        }
        if let Some(tls) = &self.tls {
            builder = builder.tls_context(Some(cql_tls_context(tls)?));
        }
        let profile = scylla::client::execution_profile::ExecutionProfile::builder()
            .request_timeout(Some(self.request_timeout))
            .build();
        builder = builder.default_execution_profile_handle(profile.into_handle());
        builder.build().await.map_err(|e| Error::CqlConnect {
            nodes: self.nodes.clone(),
            source: Arc::new(e),
        })
    }
}

/// The OpenSSL context of CQL connections: TLS 1.2 or newer only, whatever the system's OpenSSL
/// configuration allows (a server or a man in the middle offering TLS 1.0/1.1 is refused).
fn cql_tls_context(tls: &TlsFiles) -> Result<openssl::ssl::SslContext> {
    use openssl::ssl::{SslContextBuilder, SslFiletype, SslMethod, SslVerifyMode, SslVersion};
    let err = |e: openssl::error::ErrorStack| Error::Config(format!("CQL TLS: {e}"));
    let mut ctx = SslContextBuilder::new(SslMethod::tls_client()).map_err(err)?;
    ctx.set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(err)?;
    ctx.set_ca_file(&tls.ca_file)
        .map_err(|e| Error::Config(format!("CQL TLS ca_file {}: {e}", tls.ca_file.display())))?;
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            ctx.set_certificate_chain_file(cert).map_err(err)?;
            ctx.set_private_key_file(key, SslFiletype::PEM)
                .map_err(err)?;
        }
        (None, None) => {}
        _ => {
            return Err(Error::Config(
                "CQL TLS cert_file and key_file must be given together".into(),
            ));
        }
    }
    ctx.set_verify(if tls.verify_peer {
        SslVerifyMode::PEER
    } else {
        SslVerifyMode::NONE
    });
    Ok(ctx.build())
}

/// Redis: a single server (or a proxy) at `url`, or a Redis Cluster reached through
/// `cluster_nodes` (see [`crate::connection`]).
///
/// `Debug` shows the URL with any password replaced by `***`; a URL that carries a password is
/// refused by [`RedisConfig::validate`] and [`RedisConfig::client`].
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user@]host:port/db` or `rediss://` for TLS. Put the password in `password`: a URL
    /// with one (`redis://user:pass@host`) is refused, since URLs end up in logs and `ps`.
    pub url: String,
    /// Seed nodes of a Redis Cluster (`redis://host:port`, or `rediss://` for TLS with the
    /// system's trust store), any few of its masters or replicas: the client learns the rest from
    /// them and follows `MOVED`/`ASK` and failovers. When set, `url` is not used. Empty: a single
    /// server at `url`. From the environment, comma-separated.
    pub cluster_nodes: Vec<String>,
    /// Password (Redis AUTH); empty for none.
    pub password: Secret,
    /// Timeout of one command.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Timeout of establishing a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// TLS files for a `rediss://` URL (none: the system's trust store).
    pub tls: Option<TlsFiles>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6390/".to_owned(),
            cluster_nodes: Vec::new(),
            password: Secret::default(),
            response_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            tls: None,
        }
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field(
                "cluster_nodes",
                &self
                    .cluster_nodes
                    .iter()
                    .map(|n| redact_url(n))
                    .collect::<Vec<_>>(),
            )
            .field("password", &self.password)
            .field("response_timeout", &self.response_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Where a Redis URL carries a password: `scheme://user:PASSWORD@host…` or a `pass=` /
/// `password=` query parameter (redis-rs reads both). Returns the byte ranges of the values.
fn url_passwords(url: &str) -> Vec<std::ops::Range<usize>> {
    let mut found = Vec::new();
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return found;
    };
    let rest = &url[scheme_end..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if let Some(at) = rest[..authority_len].rfind('@')
        && let Some(colon) = rest[..at].find(':')
        && colon + 1 < at
    {
        found.push(scheme_end + colon + 1..scheme_end + at);
    }
    if let Some(q) = url.find('?') {
        let query_end = url[q..].find('#').map_or(url.len(), |i| q + i);
        let mut start = q + 1;
        for pair in url[q + 1..query_end].split('&') {
            let end = start + pair.len();
            if let Some((name, value)) = pair.split_once('=') {
                let name = name.to_ascii_lowercase();
                if (name == "pass" || name == "password") && !value.is_empty() {
                    found.push(start + name.len() + 1..end);
                }
            }
            start = end + 1;
        }
    }
    found
}

/// `url` with every password in it replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    for range in url_passwords(url).into_iter().rev() {
        out.replace_range(range, "***");
    }
    out
}

impl RedisConfig {
    /// Refuses a URL that carries a password (the error shows the URL with it masked).
    pub fn validate(&self) -> Result<()> {
        let urls = std::iter::once(("redis.url", &self.url)).chain(
            self.cluster_nodes
                .iter()
                .map(|n| ("redis.cluster_nodes", n)),
        );
        for (what, url) in urls {
            if !url_passwords(url).is_empty() {
                return Err(Error::Config(format!(
                    "{what} {} carries a password: remove it from the URL and set redis.password \
                     (or the CHATLOG_REDIS_PASSWORD environment variable) instead",
                    redact_url(url)
                )));
            }
        }
        if !self.cluster_nodes.is_empty() && self.tls.is_some() {
            return Err(Error::Config(
                "redis.tls is not supported with redis.cluster_nodes: use rediss:// node URLs \
                 (certificates checked against the system's trust store)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Whether this config names a Redis Cluster (`cluster_nodes` set).
    pub fn is_cluster(&self) -> bool {
        !self.cluster_nodes.is_empty()
    }

    /// The cluster client of `cluster_nodes` (connects lazily).
    fn cluster_client(&self) -> Result<redis::cluster::ClusterClient> {
        self.validate()?;
        let mut nodes = Vec::with_capacity(self.cluster_nodes.len());
        for node in &self.cluster_nodes {
            let info: redis::ConnectionInfo = node.as_str().parse().map_err(|e| {
                Error::Config(format!("redis.cluster_nodes {}: {e}", redact_url(node)))
            })?;
            nodes.push(info);
        }
        let mut builder = redis::cluster::ClusterClientBuilder::new(nodes)
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.response_timeout);
        if !self.password.expose().is_empty() {
            builder = builder.password(self.password.expose());
        }
        builder.build().map_err(|e| Error::Redis {
            what: "open cluster client",
            source: e,
        })
    }

    /// The client for this config (connects lazily).
    pub fn client(&self) -> Result<redis::Client> {
        self.validate()?;
        // With `verify_peer = false` the client skips certificate checks (redis-rs: `#insecure`).
        let url = match &self.tls {
            Some(tls) if !tls.verify_peer && !self.url.contains('#') => {
                format!("{}#insecure", self.url)
            }
            _ => self.url.clone(),
        };
        let mut info: redis::ConnectionInfo = url
            .as_str()
            .parse()
            .map_err(|e| Error::Config(format!("redis.url {}: {e}", redact_url(&self.url))))?;
        if !self.password.expose().is_empty() {
            let settings = info
                .redis_settings()
                .clone()
                .set_password(self.password.expose());
            info = info.set_redis_settings(settings);
        }
        let client = match &self.tls {
            None => redis::Client::open(info),
            Some(tls) => {
                if !self.url.starts_with("rediss://") {
                    return Err(Error::Config(
                        "redis.tls is set but redis.url does not start with rediss://".into(),
                    ));
                }
                let pem = tls.read()?;
                let certificates = redis::TlsCertificates {
                    client_tls: pem.client.map(|(client_cert, client_key)| {
                        redis::ClientTlsConfig {
                            client_cert,
                            client_key,
                        }
                    }),
                    root_cert: Some(pem.ca),
                };
                redis::Client::build_with_tls(info, certificates)
            }
        };
        client.map_err(|e| Error::Redis {
            what: "open client",
            source: e,
        })
    }

    /// A multiplexed connection that reconnects by itself: to the server at `url`, or to the
    /// Redis Cluster of `cluster_nodes`.
    pub async fn connect(&self) -> Result<RedisConnection> {
        if self.is_cluster() {
            // A client still failing after two response timeouts is rebuilt (see the type).
            let patience = (self.response_timeout * 2).max(Duration::from_secs(1));
            return crate::connection::ClusterHandle::connect(
                self.cluster_client()?,
                patience,
                self.connect_timeout * 3,
            )
            .await
            .map(RedisConnection::Cluster)
            .map_err(|e| Error::Redis {
                what: "connect to the cluster",
                source: e,
            });
        }
        self.connect_single().await.map(RedisConnection::Single)
    }

    /// A connection to the single server at `url` (never the cluster).
    pub async fn connect_single(&self) -> Result<redis::aio::ConnectionManager> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.response_timeout))
            .set_connection_timeout(Some(self.connect_timeout));
        redis::aio::ConnectionManager::new_with_config(self.client()?, config)
            .await
            .map_err(|e| Error::Redis {
                what: "connect",
                source: e,
            })
    }
}

impl RedisConfig {
    /// `n` connections (at least one), used in turn by readers such as
    /// [`History`](crate::history::History).
    pub async fn connect_many(&self, n: usize) -> Result<RedisConnections> {
        let mut all = Vec::with_capacity(n.max(1));
        for _ in 0..n.max(1) {
            all.push(self.connect().await?);
        }
        Ok(RedisConnections::new(all))
    }
}

/// Multiplexed Redis connections used in turn. One multiplexed connection carries any number of
/// concurrent commands, but a single task reads and parses all of its replies; with many
/// concurrent readers of large replies (50-message windows) that task is the bottleneck, and a few
/// connections spread the parsing over the runtime's threads. Cheap to clone.
#[derive(Clone)]
pub struct RedisConnections {
    all: Arc<[RedisConnection]>,
    next: Arc<AtomicUsize>,
}

impl RedisConnections {
    /// Uses `all` in turn; an empty list is a programming error.
    ///
    /// # Panics
    /// If `all` is empty.
    pub fn new(all: Vec<RedisConnection>) -> RedisConnections {
        assert!(!all.is_empty(), "RedisConnections needs a connection");
        RedisConnections {
            all: all.into(),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// How many connections are used in turn.
    pub fn count(&self) -> usize {
        self.all.len()
    }

    /// The next connection in turn.
    pub fn get(&self) -> RedisConnection {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.all.len();
        self.all[i].clone()
    }
}

impl From<RedisConnection> for RedisConnections {
    fn from(one: RedisConnection) -> Self {
        RedisConnections::new(vec![one])
    }
}

impl From<redis::aio::ConnectionManager> for RedisConnections {
    fn from(one: redis::aio::ConnectionManager) -> Self {
        RedisConnections::new(vec![one.into()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl s_server` with the given arguments on a free port, killed on drop.
    struct TlsServer(std::process::Child, u16);

    impl TlsServer {
        fn start(dir: &std::path::Path, args: &[&str]) -> TlsServer {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let child = std::process::Command::new("openssl")
                .args(["s_server", "-quiet", "-accept"])
                .arg(format!("127.0.0.1:{port}"))
                .args(["-cert", "server.pem", "-key", "server.key"])
                .args(args)
                .current_dir(dir)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("the openssl command (Debian package openssl)");
            let server = TlsServer(child, port);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "s_server never listened"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            server
        }

        fn tcp(&self) -> std::net::TcpStream {
            let tcp = std::net::TcpStream::connect(("127.0.0.1", self.1)).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            tcp
        }
    }

    impl Drop for TlsServer {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A CA and a server certificate for 127.0.0.1, made by the stack script (`certs DIR`) in a
    /// directory of this process (pid and call number) that is removed on drop.
    struct Certs(std::path::PathBuf);

    impl Certs {
        fn new() -> Certs {
            static CALLS: AtomicUsize = AtomicUsize::new(0);
            let n = CALLS.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("chatlog-store-tls-{}-{n}", std::process::id()));
            // A leftover of an earlier process with the same pid.
            let _ = std::fs::remove_dir_all(&dir);
            let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dev/stack.sh");
            // Its stderr goes to the terminal, where a failure's reason stays readable.
            let status = std::process::Command::new(script)
                .arg("certs")
                .arg(&dir)
                .status()
                .expect("dev/stack.sh");
            assert!(status.success(), "dev/stack.sh certs: {status}");
            Certs(dir)
        }
    }

    impl Drop for Certs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A server (or a man in the middle) that offers only TLS 1.1 is refused by the CQL context,
    /// even with OpenSSL's security level lowered to 0 (which alone would allow TLS 1.1): the
    /// context's own minimum, TLS 1.2, refuses it. A client without that minimum completes the
    /// handshake with the same server, so the server really speaks TLS 1.1.
    #[test]
    fn cql_tls_refuses_a_tls_1_1_server() {
        use openssl::ssl::{Ssl, SslConnector, SslMethod, SslVersion};
        let certs = Certs::new();
        let dir = &certs.0;
        let server = TlsServer::start(dir, &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]);
        let tls = TlsFiles {
            ca_file: dir.join("ca.pem"),
            cert_file: None,
            key_file: None,
            verify_peer: true,
        };

        let mut lax = SslConnector::builder(SslMethod::tls_client()).unwrap();
        lax.set_ca_file(&tls.ca_file).unwrap();
        lax.set_security_level(0);
        lax.set_cipher_list("DEFAULT@SECLEVEL=0").unwrap();
        lax.set_min_proto_version(Some(SslVersion::TLS1_1)).unwrap();
        let stream = lax
            .build()
            .connect("127.0.0.1", server.tcp())
            .expect("a client that allows TLS 1.1 completes the handshake");
        assert_eq!(stream.ssl().version_str(), "TLSv1.1");
        // s_server serves one connection at a time.
        drop(stream);

        let ctx = cql_tls_context(&tls).unwrap();
        let mut ssl = Ssl::new(&ctx).unwrap();
        ssl.set_security_level(0);
        ssl.set_cipher_list("DEFAULT@SECLEVEL=0").unwrap();
        let err = ssl
            .connect(server.tcp())
            .map(|s| s.ssl().version_str())
            .expect_err("the CQL context must refuse TLS 1.1");
        let err = format!("{err:?}").to_lowercase();
        assert!(
            err.contains("protocol") || err.contains("version"),
            "a protocol version error: {err}"
        );
    }

    /// The default Redis settings with `url`.
    fn redis_at(url: &str) -> RedisConfig {
        RedisConfig {
            url: url.to_owned(),
            ..RedisConfig::default()
        }
    }

    #[test]
    fn redis_url_passwords_are_found_and_masked() {
        for (url, shown) in [
            ("redis://:hunter2@h:6379/0", "redis://:***@h:6379/0"),
            ("rediss://app:hunter2@h/", "rediss://app:***@h/"),
            ("redis://app:p@ss:w0rd@h/", "redis://app:***@h/"),
            (
                "redis+unix:///tmp/r.sock?db=1&pass=hunter2",
                "redis+unix:///tmp/r.sock?db=1&pass=***",
            ),
            (
                "unix:///tmp/r.sock?password=hunter2&db=2",
                "unix:///tmp/r.sock?password=***&db=2",
            ),
        ] {
            assert_eq!(redact_url(url), shown);
            let c = redis_at(url);
            assert!(!format!("{c:?}").contains("hunter2"), "{c:?}");
            let err = c.validate().unwrap_err().to_string();
            assert!(
                err.contains("redis.password") && !err.contains("hunter2"),
                "{err}"
            );
            let err = c.client().expect_err("refused").to_string();
            assert!(!err.contains("hunter2"), "{err}");
        }
        for url in [
            "redis://127.0.0.1:6390/",
            "redis://app@h/",
            "redis://:@h/",
            "rediss://h/?db=1",
        ] {
            assert_eq!(redact_url(url), url);
            redis_at(url).validate().unwrap();
        }
    }
}
