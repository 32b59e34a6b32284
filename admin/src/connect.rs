//! [`Ctx`]: the configuration and the connections a subcommand asks for, opened on first use (a
//! `config print` opens none; a `doctor` opens each under its own check).

use std::sync::Arc;

use chatlog_consumer::Config;
use chatlog_schemas::Codec;
use chatlog_store::history::{History, HistoryConfig};
use scylla::client::session::Session;
use tokio::sync::OnceCell;

use crate::{Error, Result};

/// The effective configuration and lazily opened connections.
pub struct Ctx {
    /// The effective configuration.
    pub config: Config,
    cql: OnceCell<Arc<Session>>,
    redis: OnceCell<chatlog_store::RedisConnection>,
    history: OnceCell<History>,
}

impl Ctx {
    /// A context for `config`; nothing is opened yet.
    pub fn new(config: Config) -> Ctx {
        Ctx {
            config,
            cql: OnceCell::new(),
            redis: OnceCell::new(),
            history: OnceCell::new(),
        }
    }

    /// The CQL session (`cql.*`, login included), opened once.
    pub async fn cql(&self) -> Result<Arc<Session>> {
        self.cql
            .get_or_try_init(|| async { Ok(Arc::new(self.config.cql.connect().await?)) })
            .await
            .cloned()
    }

    /// A Redis connection (`redis.*`, login included), opened once.
    pub async fn redis(&self) -> Result<chatlog_store::RedisConnection> {
        self.redis
            .get_or_try_init(|| async { Ok::<_, Error>(self.config.redis.connect().await?) })
            .await
            .cloned()
    }

    /// History over the configured keyspace and window (the readers' view of a session).
    pub async fn history(&self) -> Result<&History> {
        self.history
            .get_or_try_init(|| async {
                let history = History::new(
                    self.cql().await?,
                    &self.config.cql.keyspace,
                    self.redis().await?,
                    self.codec()?,
                    HistoryConfig {
                        window: self.config.window.clone(),
                        // The partitions the consumer writes: another bucket size would read
                        // the wrong ones.
                        bucket_size: self.config.writer.bucket_size,
                        ..HistoryConfig::default()
                    },
                )
                .await?;
                Ok::<_, Error>(history)
            })
            .await
    }

    /// The codec with the consumer's limits.
    pub fn codec(&self) -> Result<Codec> {
        Ok(self.config.codec()?)
    }

    /// The settings every Kafka client shares (bootstrap, TLS/SASL, properties).
    pub fn kafka_base(&self) -> Result<rdkafka::ClientConfig> {
        Ok(chatlog_consumer::kafka::client_config(&self.config.kafka)?)
    }
}
