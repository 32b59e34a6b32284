//! How to reach the CQL database and Redis. Both structs reject unknown keys, so a typo in a config
//! file is an error instead of a silently ignored setting.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Deserialize;

use crate::security::TlsFiles;
use crate::{Error, Result, Secret};

/// The CQL database (ScyllaDB in production, Cassandra locally).
#[derive(Debug, Clone, Deserialize)]
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
            source: Box::new(e),
        })
    }
}

/// The OpenSSL context of CQL connections.
fn cql_tls_context(tls: &TlsFiles) -> Result<openssl::ssl::SslContext> {
    use openssl::ssl::{SslContextBuilder, SslFiletype, SslMethod, SslVerifyMode};
    let err = |e: openssl::error::ErrorStack| Error::Config(format!("CQL TLS: {e}"));
    let mut ctx = SslContextBuilder::new(SslMethod::tls_client()).map_err(err)?;
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

/// Redis (a single server or a proxy; keys are Cluster-ready through their hash tags).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user@]host:port/db` or `rediss://` for TLS. Put the password in `password`, not here.
    pub url: String,
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
            password: Secret::default(),
            response_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            tls: None,
        }
    }
}

impl RedisConfig {
    /// The client for this config (connects lazily).
    pub fn client(&self) -> Result<redis::Client> {
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
            .map_err(|e| Error::Config(format!("redis.url: {e}")))?;
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

    /// A multiplexed connection that reconnects by itself.
    pub async fn connect(&self) -> Result<redis::aio::ConnectionManager> {
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
    all: Arc<[redis::aio::ConnectionManager]>,
    next: Arc<AtomicUsize>,
}

impl RedisConnections {
    /// Uses `all` in turn; an empty list is a programming error.
    ///
    /// # Panics
    /// If `all` is empty.
    pub fn new(all: Vec<redis::aio::ConnectionManager>) -> RedisConnections {
        assert!(!all.is_empty(), "RedisConnections needs a connection");
        RedisConnections {
            all: all.into(),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The next connection in turn.
    pub fn get(&self) -> redis::aio::ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.all.len();
        self.all[i].clone()
    }
}

impl From<redis::aio::ConnectionManager> for RedisConnections {
    fn from(one: redis::aio::ConnectionManager) -> Self {
        RedisConnections::new(vec![one])
    }
}
