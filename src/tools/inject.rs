//! `webshop inject`: publish one message (a file or stdin) to a topic N
//! times, the way a tester provokes duplicates.

use anyhow::Context;
use serde_json::Value;
use shared::topics::Topic;

pub struct Inject {
    pub broker: String,
    pub prefix: String,
    /// A topic below the prefix, e.g. `orders/send`.
    pub topic: String,
    pub payload: Vec<u8>,
    pub times: usize,
    /// Give every copy a fresh `message_id` (business-key dedup instead of
    /// inbox dedup).
    pub fresh_ids: bool,
    /// User name and password (a tester's) where the broker has users.
    pub credentials: Option<(String, String)>,
}

/// Publishes and returns how many copies the broker acknowledged.
pub async fn run(cfg: Inject) -> anyhow::Result<usize> {
    let path = match Topic::ALL.into_iter().find(|t| t.suffix() == cfg.topic) {
        Some(t) => t.path(&cfg.prefix),
        // Unknown topics are allowed on purpose: testers probe those too.
        None => format!("{}{}", cfg.prefix, cfg.topic),
    };
    let mut messages = Vec::with_capacity(cfg.times);
    for _ in 0..cfg.times {
        let payload = if cfg.fresh_ids {
            let mut v: Value = serde_json::from_slice(&cfg.payload).context("--fresh-ids needs a JSON envelope")?;
            v["message_id"] = Value::String(uuid::Uuid::now_v7().to_string());
            serde_json::to_vec(&v)?
        } else {
            cfg.payload.clone()
        };
        messages.push((path.clone(), payload));
    }
    super::mqtt::publish_all(&cfg.broker, cfg.credentials, messages).await
}
