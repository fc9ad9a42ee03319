//! exfilguard on Kafka. Events leave through an on-disk [`spool::Spool`] drained in order by an
//! idempotent acks=all producer ([`sender`]); convictions travel on a compacted topic keyed by
//! registered domain that every agent reads from the beginning ([`fleet`]); `exfilguard
//! analytics` aggregates the event topic fleet-wide ([`analytics`]).

pub mod analytics;
pub mod fleet;
pub mod sender;
pub mod spool;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("kafka: {0}")]
    Other(String),
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
}

pub type Result<T> = std::result::Result<T, KafkaError>;

/// Connection settings shared by every client the agent opens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap servers, `host:port[,host:port…]`; empty disables Kafka.
    pub brokers: String,
    /// Topic of OCSF events.
    pub events_topic: String,
    /// Compacted topic of fleet blocklist entries.
    pub blocklist_topic: String,
    /// Partitions and replication of the topics exfilguard creates when missing
    /// (replication -1: the broker's default).
    pub partitions: i32,
    pub replication: i32,
    /// On-disk spool between the agent and the broker (events and convictions).
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    /// Publish this host's convictions to the blocklist topic.
    pub publish_convictions: bool,
    /// Apply the fleet blocklist topic to the kernel blocklist.
    pub follow_blocklist: bool,
    /// Lifetime of the entries this host publishes, seconds (0: forever).
    pub conviction_ttl_secs: u64,
    /// Extra librdkafka properties (TLS, SASL …), passed through unchanged.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            events_topic: "exfilguard.events".into(),
            blocklist_topic: "exfilguard.blocklist".into(),
            partitions: 6,
            replication: -1,
            spool_dir: PathBuf::from("/var/lib/exfilguard/spool"),
            spool_max_bytes: 256 << 20,
            publish_convictions: true,
            follow_blocklist: true,
            conviction_ttl_secs: 7 * 86400,
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaSettings {
    pub fn enabled(&self) -> bool {
        !self.brokers.trim().is_empty()
    }

    pub fn client_config(&self, client_id: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", client_id)
            // a dead broker must not flood the log: librdkafka reports, we count and spool
            .set("log.connection.close", "false");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Creates the event topic and the compacted blocklist topic when they do not exist.
    pub fn ensure_topics(&self, client_id: &str) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = self.client_config(client_id).create()?;
        let rep = || TopicReplication::Fixed(self.replication);
        let topics = [
            NewTopic::new(&self.events_topic, self.partitions, rep()),
            NewTopic::new(&self.blocklist_topic, self.partitions, rep())
                .set("cleanup.policy", "compact"),
        ];
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        let res = runtime().block_on(admin.create_topics(&topics, &opts))?;
        for r in res {
            match r {
                Ok(_) => {}
                Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, e)) => return Err(KafkaError::Other(format!("creating topic {t}: {e}"))),
            }
        }
        Ok(())
    }
}

/// rdkafka's futures need a runtime for their timers; each blocking caller gets a small one.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
}
