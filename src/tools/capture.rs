//! `webshop capture` records everything on the bus to JSON lines;
//! `webshop replay` publishes a capture again: all of it or a selection,
//! in order, shuffled (seeded) or reversed.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rumqttc::{Event, Packet, QoS};
use serde::{Deserialize, Serialize};

/// One captured message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Captured {
    pub at_ms: i64,
    pub topic: String,
    /// The payload as text (lossy for binary payloads).
    pub payload: String,
}

/// Records every message under `prefix` for `duration`; returns the count.
pub async fn capture(
    broker: &str,
    credentials: Option<(String, String)>,
    prefix: &str,
    duration: Duration,
    out: &Path,
) -> anyhow::Result<usize> {
    let (client, mut eventloop) = super::mqtt::connect_as(broker, "capture", credentials).await?;
    client.subscribe(format!("{prefix}#"), QoS::AtLeastOnce).await?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await? {
            break;
        }
    }
    println!("capturing {prefix}# for {} s to {}", duration.as_secs_f64(), out.display());
    let mut file =
        std::io::BufWriter::new(std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?);
    let deadline = tokio::time::Instant::now() + duration;
    let mut n = 0;
    loop {
        let event = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tokio::signal::ctrl_c() => break,
            e = eventloop.poll() => e?,
        };
        if let Event::Incoming(Packet::Publish(p)) = event {
            let line = Captured {
                at_ms: shared::clock::now_ms(),
                topic: p.topic.clone(),
                payload: String::from_utf8_lossy(&p.payload).into_owned(),
            };
            serde_json::to_writer(&mut file, &line)?;
            file.write_all(b"\n")?;
            n += 1;
        }
    }
    file.flush()?;
    Ok(n)
}

/// Which captured messages to replay, and in what order.
#[derive(Debug, Default)]
pub struct Selection {
    /// Only these topics (suffix below the prefix, e.g. `orders/send`).
    pub topics: Vec<String>,
    /// Only messages about this order id.
    pub order_id: Option<String>,
    /// Shuffle with this seed.
    pub shuffle_seed: Option<u64>,
    pub reverse: bool,
}

pub fn read_capture(path: &Path) -> anyhow::Result<Vec<Captured>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    std::io::BufReader::new(file)
        .lines()
        .enumerate()
        .filter(|(_, l)| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
        .map(|(i, l)| serde_json::from_str(&l?).with_context(|| format!("line {} of {}", i + 1, path.display())))
        .collect()
}

/// Applies `sel` to a capture.
pub fn select(mut msgs: Vec<Captured>, sel: &Selection) -> Vec<Captured> {
    msgs.retain(|m| {
        let topic_ok = sel.topics.is_empty() || sel.topics.iter().any(|t| m.topic.ends_with(t.as_str()));
        let order_ok = sel.order_id.as_ref().is_none_or(|id| {
            serde_json::from_str::<serde_json::Value>(&m.payload)
                .ok()
                .and_then(|v| v["order_id"].as_str().map(|s| s == id))
                .unwrap_or(false)
        });
        topic_ok && order_ok
    });
    if let Some(seed) = sel.shuffle_seed {
        msgs.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    }
    if sel.reverse {
        msgs.reverse();
    }
    msgs
}

/// Publishes the selected messages; returns how many were acknowledged.
pub async fn replay(broker: &str, credentials: Option<(String, String)>, msgs: Vec<Captured>) -> anyhow::Result<usize> {
    let msgs = msgs.into_iter().map(|m| (m.topic, m.payload.into_bytes())).collect();
    super::mqtt::publish_all(broker, credentials, msgs).await
}
