//! Reference limits, measured on the same machine by the same command, so
//! the shop's numbers read as fractions of what its parts can do at all:
//!
//! - SQLite: commits/s of a database opened exactly as the services open
//!   theirs (`shared::db::Db::open`: WAL, the chosen `synchronous`, one
//!   writer, `BEGIN IMMEDIATE`), one row per commit and 100 rows per commit;
//! - the broker: QoS 1 messages/s through an embedded rumqttd from one
//!   publisher (`shared::bus::INFLIGHT` in flight, as the services) to one subscriber acking
//!   manually in order, as the consumers do;
//! - a single-process baseline: the services' real handlers applied to
//!   their real databases through `Consumer::apply`, in batches of 100 as
//!   the consumer takes them, with the outbox drained and marked sent as
//!   the relay does, but no broker and no HTTP.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde::{Deserialize, Serialize};
use shared::config::DbConfig;
use shared::consumer::{Consumer, ParkingPolicy};
use shared::db::{Db, DbError, Migrations, P};
use shared::ids::{Email, OrderId, Quantity};
use shared::message::{Envelope, OrderLine, SendOrder};
use shared::outbox::Wakeup;
use shared::topics::{Topic, DEFAULT_PREFIX};

use super::record::{self, Latency};

/// Orders (or messages) per transaction, as the consumer batches them.
pub const BATCH: usize = 100;

/// A measured rate and the latency of each unit (commit, message, batch).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rate {
    pub what: String,
    pub per_s: f64,
    /// What `per_s` counts: rows, messages, orders.
    pub unit: String,
    pub latency: Latency,
    /// What the latency is of.
    pub latency_of: String,
}

/// Rows committed per second, `batch` rows per `BEGIN IMMEDIATE … COMMIT`,
/// inserted one statement per row or (`one_statement`) all in one, through
/// [`Db::write`] exactly as the services write (one hand-off to the writer
/// thread per transaction, cached prepared statements).
pub async fn sqlite(synchronous: &str, batch: usize, one_statement: bool, secs: f64) -> anyhow::Result<Rate> {
    let dir = tempfile::tempdir()?;
    let cfg =
        DbConfig { path: dir.path().join("reference.db"), synchronous: synchronous.parse()?, ..Default::default() };
    let none = || sqlx::migrate::Migrator::DEFAULT;
    let db = Db::open(&cfg, &Migrations { sqlite: none(), postgres: none() }).await?;
    // A row about the size of an inbox row plus an outbox envelope.
    db.write(|tx| tx.execute("CREATE TABLE bench (id TEXT PRIMARY KEY, payload BLOB NOT NULL)", &[])).await?;
    let payload = vec![b'x'; 400];
    let multi = format!(
        "INSERT INTO bench (id, payload) VALUES {}",
        (0..batch).map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2)).collect::<Vec<_>>().join(", ")
    );
    let mut commits = record::histogram();
    let (start, mut rows) = (Instant::now(), 0u64);
    while start.elapsed().as_secs_f64() < secs {
        let t = Instant::now();
        let (multi, payload) = (multi.clone(), payload.clone());
        db.write(move |tx| -> Result<(), DbError> {
            let ids: Vec<String> = (0..batch).map(|_| uuid::Uuid::new_v4().to_string()).collect();
            if one_statement {
                let values: Vec<P<'_>> = ids.iter().flat_map(|id| [id as P<'_>, &payload as P<'_>]).collect();
                tx.execute(&multi, &values)?;
            } else {
                for id in &ids {
                    tx.execute("INSERT INTO bench (id, payload) VALUES ($1, $2)", &[id, &payload])?;
                }
            }
            Ok(())
        })
        .await?;
        record::record(&mut commits, t.elapsed());
        rows += batch as u64;
    }
    let elapsed = start.elapsed().as_secs_f64();
    db.close().await;
    let how = match (batch, one_statement) {
        (1, _) => "1 row per commit".to_owned(),
        (n, false) => format!("{n} rows per commit, one INSERT each"),
        (n, true) => format!("{n} rows per commit in one INSERT"),
    };
    Ok(Rate {
        what: format!("SQLite, {how}, synchronous={synchronous}"),
        per_s: rows as f64 / elapsed,
        unit: "rows/s".into(),
        latency: Latency::of(&commits),
        latency_of: "transaction".into(),
    })
}

/// QoS 1 messages/s through an embedded broker, publish → receive → ack.
pub async fn broker(secs: f64) -> anyhow::Result<Rate> {
    let port = super::shop::free_port()?;
    broker::spawn(&broker::BrokerConfig { listen: SocketAddr::from(([127, 0, 0, 1], port)), ..Default::default() })?;
    let options = |name: &str, manual_acks: bool| {
        let mut o = MqttOptions::new(format!("bench-ref-{name}-{port}"), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(10)).set_inflight(shared::bus::INFLIGHT).set_manual_acks(manual_acks);
        o
    };
    let topic = "bench/reference";
    let (sub, mut sub_loop) = AsyncClient::new(options("sub", true), 1024);
    sub.subscribe(topic, QoS::AtLeastOnce).await?;
    wait_for(&mut sub_loop, |e| matches!(e, Event::Incoming(Packet::SubAck(_)))).await?;
    let (publisher, mut pub_loop) = AsyncClient::new(options("pub", false), 1024);
    wait_for(&mut pub_loop, |e| matches!(e, Event::Incoming(Packet::ConnAck(_)))).await?;

    let origin = Instant::now();
    let deadline = origin + Duration::from_secs_f64(secs);
    // Every payload carries its send time, for the delivery latency.
    let receiver = tokio::spawn(async move {
        let mut latency = record::histogram();
        let mut received = 0u64;
        while Instant::now() < deadline {
            let event = match tokio::time::timeout_at(deadline.into(), sub_loop.poll()).await {
                Ok(e) => e?,
                Err(_) => break,
            };
            if let Event::Incoming(Packet::Publish(p)) = event {
                let sent_us = u64::from_le_bytes(p.payload[..8].try_into().expect("8-byte stamp"));
                record::record(&mut latency, origin.elapsed().saturating_sub(Duration::from_micros(sent_us)));
                received += 1;
                sub.ack(&p).await?;
            }
        }
        anyhow::Ok((received, latency))
    });
    let pump = tokio::spawn(async move {
        while Instant::now() < deadline {
            match tokio::time::timeout_at(deadline.into(), pub_loop.poll()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(anyhow::anyhow!("publisher connection failed: {e}")),
                Err(_) => break,
            }
        }
        Ok(())
    });
    // About the size of an `orders/send` envelope.
    let mut payload = vec![b'x'; 450];
    while Instant::now() < deadline {
        let stamp = origin.elapsed().as_micros() as u64;
        payload[..8].copy_from_slice(&stamp.to_le_bytes());
        // Waits when 1024 requests are queued; rumqttc keeps `INFLIGHT` out.
        let publish = publisher.publish(topic, QoS::AtLeastOnce, false, payload.clone());
        if tokio::time::timeout_at(deadline.into(), publish).await.is_err() {
            break;
        }
    }
    pump.await??;
    let (received, latency) = receiver.await??;
    Ok(Rate {
        what: "broker (embedded rumqttd), QoS 1, 1 publisher → 1 subscriber with manual acks".into(),
        per_s: received as f64 / secs,
        unit: "msgs/s".into(),
        latency: Latency::of(&latency),
        latency_of: "publish → receive, at saturation".into(),
    })
}

async fn wait_for(eventloop: &mut rumqttc::EventLoop, want: impl Fn(&Event) -> bool) -> anyhow::Result<()> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await {
            Ok(Ok(e)) if want(&e) => return Ok(()),
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => bail!("disconnected"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("reference broker connection failed: {e}"),
            Err(_) => bail!("the reference broker did not answer within 5 s"),
        }
    }
}

/// Orders/s through the real handlers and databases, with no messaging.
pub async fn baseline(synchronous: &str, secs: f64) -> anyhow::Result<Rate> {
    let dir = tempfile::tempdir()?;
    let synchronous_level = synchronous.parse()?;
    let db =
        |name: &str| DbConfig { path: dir.path().join(name), synchronous: synchronous_level, ..Default::default() };
    let inv_db = Db::open(&db("inventory.db"), &inventory::store::migrations()).await?;
    let products = super::shop::bench_products()?;
    inventory::store::seed_if_empty(&inv_db, &products).await?;
    let ord_db = Db::open(&db("order.db"), &order::store::migrations()).await?;
    // Parking never happens here: every order is sent to both first.
    let policy = ParkingPolicy { retry_ms: 1000, horizon_ms: 600_000 };
    let stats = std::sync::Arc::default;
    let inv = Consumer::new(
        "bench-inventory",
        inv_db.clone(),
        DEFAULT_PREFIX,
        inventory::handlers::InventoryHandler::default(),
        Wakeup::default(),
        stats(),
        policy,
    );
    let ord = Consumer::new(
        "bench-order",
        ord_db.clone(),
        DEFAULT_PREFIX,
        order::handlers::OrderHandler { follow_up_ms: 5000 },
        Wakeup::default(),
        stats(),
        policy,
    );
    let email = Email::parse("b@example.com")?;
    let send_topic = Topic::OrdersSend.path(DEFAULT_PREFIX);
    let mut batches = record::histogram();
    let (start, mut orders, mut n) = (Instant::now(), 0u64, 0usize);
    while start.elapsed().as_secs_f64() < secs {
        let t = Instant::now();
        let sends: Vec<Bytes> = (0..BATCH)
            .map(|_| {
                n += 1;
                let p = &products[n % products.len()];
                let body = SendOrder {
                    customer_email: email.clone(),
                    items: vec![OrderLine {
                        sku: p.sku.clone(),
                        quantity: Quantity::new(1).expect("1 is a valid quantity"),
                        unit_price_cents: p.price_cents,
                    }],
                    currency: p.currency.clone(),
                    fingerprint: format!("{n:064x}"),
                    cart_id: None,
                };
                Envelope::new(Topic::OrdersSend, OrderId(uuid::Uuid::new_v4()), body).to_json().into()
            })
            .collect();
        let msgs: Vec<(String, Bytes)> = sends.into_iter().map(|p| (send_topic.clone(), p)).collect();
        ord.apply(msgs.clone()).await?;
        inv.apply(msgs).await?;
        // Inventory's relay: its decisions go to the order service.
        ord.apply(relay(&inv_db).await?).await?;
        // The order relay's status events go to the front: no database work.
        relay(&ord_db).await?;
        orders += BATCH as u64;
        record::record(&mut batches, t.elapsed());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let open = ord_db.reader.scalar("SELECT COUNT(*) FROM orders WHERE status <> 'confirmed'", &[]).await?;
    if open > 0 {
        bail!("the baseline left {open} order(s) unconfirmed: it does not do the shop's work");
    }
    inv_db.close().await;
    ord_db.close().await;
    Ok(Rate {
        what: format!("single-process baseline: real handlers and databases, no messaging, synchronous={synchronous}"),
        per_s: orders as f64 / elapsed,
        unit: "orders/s".into(),
        latency: Latency::of(&batches),
        latency_of: "batch of 100 orders".into(),
    })
}

/// Takes every unsent outbox event and marks it sent, as the relay does
/// after the broker's PUBACK; returns the events as (full topic, payload).
async fn relay(db: &Db) -> anyhow::Result<Vec<(String, Bytes)>> {
    let unsent = shared::outbox::unsent(db, 0, 10_000).await?;
    let seqs: Vec<i64> = unsent.iter().map(|u| u.seq).collect();
    shared::outbox::mark_sent(db, seqs).await.context("marking the outbox sent")?;
    Ok(unsent.into_iter().map(|u| (format!("{DEFAULT_PREFIX}{}", u.topic), Bytes::from(u.payload))).collect())
}
