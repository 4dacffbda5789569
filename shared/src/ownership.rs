//! Which instance of a service consumes which partitions.
//!
//! A service's topics are split into [`Partitions`] (`bus.partitions`).
//! Each partition is one persistent MQTT session per service (client id
//! `{bus.client_id}-p{n}`, or `bus.client_id` itself when there is only
//! one), consumed by one instance at a time; all of an order's messages are
//! in one partition, so per-order ordering and parking work as with a
//! single instance. An instance consumes a partition only while it owns it:
//!
//! - SQLite: one instance per database file, owning every partition.
//! - PostgreSQL: an instance owns partition `n` while it holds the session
//!   advisory lock `(service key, n)` on a connection of its own, the
//!   lease, which it keeps talking on every second. The server ends a
//!   lease silent for 5 s (`idle_session_timeout`), which frees its locks:
//!   an instance that is killed loses its partitions at once, one that is
//!   stopped (or cut off) within seconds, and another claims them at its
//!   next tick. The new owner connects with the partition's client id and
//!   inherits the broker's session: what the old owner had not acked is
//!   delivered again, and the inbox drops what it had committed.
//!
//! Each instance aims at its share, ⌈partitions / live instances⌉ (an
//! instance is live while its lease holds its member lock): it claims free partitions
//! while below its share and gives one back per tick while above it, so an
//! instance that joins gets work and one that leaves (SIGTERM: it stops
//! consuming, lets its batches commit and ack, then lets go) hands its
//! share over. No instance's config names another.
//!
//! Fencing: a claim records the new owner in `partition_owners`, and every
//! batch checks in its own transaction (`FOR SHARE`) that its partitions
//! are still this instance's ([`check`]). A process that was stopped, lost
//! its partitions and wakes up can therefore not commit what it read
//! before; its sessions don't reconnect either (a [`Gate`] asks first), so
//! it never takes a session back from the new owner.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, PgConnection, Row as _};
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, BusOptions, Delivery, Gate, QoS};
use crate::config::BusConfig;
use crate::db::{instance, postgres::Target, DbError, DbResult, Tx};
use crate::topics::{Partitions, Topic};

/// How often an instance beats, claims and gives back.
const TICK: Duration = Duration::from_secs(1);
/// Most a gate waits for the lease to answer.
const GATE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most a stopping session gets to say goodbye to the broker.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// The partitions this instance consumes now, each with its session;
/// `None` until its first claims are made.
pub type Owned = watch::Receiver<Option<BTreeMap<u16, Bus>>>;

/// The partition sessions of one instance, feeding one consumer.
pub(crate) struct Sessions {
    node: &'static str,
    config: BusConfig,
    topics: &'static [Topic],
    partitions: Partitions,
    deliveries: mpsc::UnboundedSender<Delivery>,
    owned: watch::Sender<Option<BTreeMap<u16, Bus>>>,
    running: BTreeMap<u16, Running>,
    /// Ends every session: cancelled once the consumer has finished (its
    /// last batch acked).
    bus_shutdown: CancellationToken,
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Sessions {
    /// Sessions of `topics` under `config` (the service's base client id),
    /// their deliveries sent to `deliveries`. Checks `config.partitions`.
    pub(crate) fn new(
        node: &'static str,
        config: BusConfig,
        topics: &'static [Topic],
        deliveries: mpsc::UnboundedSender<Delivery>,
        bus_shutdown: CancellationToken,
    ) -> anyhow::Result<(Sessions, Owned)> {
        let partitions = Partitions::new(config.partitions)?;
        // Bad TLS settings fail here, before anything runs.
        crate::tls::bus_transport(&config)?;
        let (owned, watch) = watch::channel(None);
        let sessions =
            Sessions { node, config, topics, partitions, deliveries, owned, running: BTreeMap::new(), bus_shutdown };
        Ok((sessions, watch))
    }

    /// Starts consuming every partition (SQLite: the only instance).
    pub(crate) fn start_all(&mut self) {
        for p in 0..self.partitions.count() {
            self.start(p, None);
        }
    }

    /// Keeps the sessions until the consumer has finished.
    pub(crate) async fn run_sole(mut self) {
        self.bus_shutdown.clone().cancelled().await;
        self.stop_all("shutting down").await;
    }

    /// Claims and gives back partitions through PostgreSQL (see the module
    /// docs) until `shutdown`; keeps the lease, and the sessions, until the
    /// consumer has finished.
    pub(crate) async fn run_shared(mut self, target: Arc<Target>, shutdown: CancellationToken) {
        let key = lock_key(&target.schema);
        let members = lock_key(&format!("{}/members", target.schema));
        let lease: Arc<Mutex<Option<PgConnection>>> = Arc::default();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Start the claims from a place of our own, so that instances
        // starting together don't all try the same partitions first.
        let offset = (lock_key(instance()) as u32 % u32::from(self.partitions.count())) as u16;
        loop {
            tokio::select! {
                _ = self.bus_shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.reap().await;
            let live = {
                let mut conn = lease.lock().await;
                beat(&mut conn, &target, members).await
            };
            let live = match live {
                Ok(live) => live,
                Err(e) => {
                    if !self.running.is_empty() {
                        tracing::warn!(node = self.node, error = %e, "lost the ownership session; giving up every partition");
                    } else {
                        tracing::warn!(node = self.node, error = %e, "no ownership session; retrying");
                    }
                    self.stop_all("ownership session lost").await;
                    continue;
                }
            };
            metrics::gauge!("instances_live", "node" => self.node).set(live as f64);
            if shutdown.is_cancelled() {
                // Keep the lease alive until the consumer is done; claim nothing.
                continue;
            }
            let share = usize::from(self.partitions.count()).div_ceil(live.max(1) as usize);
            if self.running.len() > share {
                let p = *self.running.keys().next_back().expect("more than the share is not none");
                self.stop(p, "rebalancing").await;
                let mut conn = lease.lock().await;
                if let Some(c) = conn.as_mut() {
                    let r =
                        sqlx::query("SELECT pg_advisory_unlock($1, $2)").bind(key).bind(i32::from(p)).execute(c).await;
                    if r.is_err() {
                        // The session is gone, and with it the lock.
                        *conn = None;
                    }
                }
                continue;
            }
            let count = self.partitions.count();
            for i in 0..count {
                if self.running.len() >= share {
                    break;
                }
                let p = (offset + i) % count;
                if self.running.contains_key(&p) {
                    continue;
                }
                let claimed = {
                    let mut conn = lease.lock().await;
                    claim(&mut conn, key, p).await
                };
                match claimed {
                    Ok(true) => {
                        tracing::info!(node = self.node, partition = p, instance = instance(), "claimed partition");
                        metrics::counter!("partition_claims_total", "node" => self.node).increment(1);
                        self.start(p, Some(gate(lease.clone(), p)));
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(node = self.node, error = %e, partition = p, "claiming a partition failed");
                        break;
                    }
                }
            }
            // Ready from here on, with whatever share it got.
            self.owned.send_if_modified(|o| o.is_none() && o.replace(BTreeMap::new()).is_none());
        }
        self.stop_all("shutting down").await;
        // Closing the lease lets go of every lock at once.
        let last = lease.lock().await.take();
        if let Some(conn) = last {
            let _ = conn.close().await;
        }
    }

    /// Starts the session of partition `p`.
    fn start(&mut self, p: u16, gate: Option<Gate>) {
        let mut config = self.config.clone();
        if self.partitions.count() > 1 {
            config.client_id = format!("{}-p{p}", config.client_id);
        }
        let prefix = config.topic_prefix.clone();
        let opts = BusOptions {
            subscriptions: self.topics.iter().map(|t| self.partitions.filter(&prefix, *t, p)).collect(),
            partition: Some(p),
            gate,
            subscription_qos: QoS::AtLeastOnce,
            manual_acks: true,
            clean_session: false,
            config,
        };
        let stop = self.bus_shutdown.child_token();
        let (bus, mut rx, bus_task) = match Bus::start(opts, stop.clone()) {
            Ok(started) => started,
            // Checked in `new`: the same settings can't fail now.
            Err(e) => {
                tracing::error!(node = self.node, error = %e, partition = p, "could not start a partition session");
                return;
            }
        };
        let out = self.deliveries.clone();
        let task = tokio::spawn(async move {
            // Until the session ends (stopped, or its gate said no).
            while let Some(d) = rx.recv().await {
                if out.send(d).is_err() {
                    break;
                }
            }
            let _ = bus_task.await;
        });
        self.running.insert(p, Running { stop, task });
        self.owned.send_modify(|o| {
            o.get_or_insert_with(BTreeMap::new).insert(p, bus);
        });
        self.gauges(p, 1.0);
    }

    /// Ends partition `p`'s session.
    async fn stop(&mut self, p: u16, why: &'static str) {
        let Some(r) = self.running.remove(&p) else { return };
        r.stop.cancel();
        let _ = tokio::time::timeout(STOP_TIMEOUT, r.task).await;
        self.owned.send_modify(|o| {
            if let Some(o) = o {
                o.remove(&p);
            }
        });
        self.gauges(p, 0.0);
        tracing::info!(node = self.node, partition = p, why, "released partition");
        metrics::counter!("partition_releases_total", "node" => self.node, "why" => why).increment(1);
    }

    async fn stop_all(&mut self, why: &'static str) {
        let all: Vec<u16> = self.running.keys().copied().collect();
        for p in all {
            self.stop(p, why).await;
        }
    }

    /// Forgets sessions that ended by themselves (their gate said no).
    async fn reap(&mut self) {
        let ended: Vec<u16> = self.running.iter().filter(|(_, r)| r.task.is_finished()).map(|(p, _)| *p).collect();
        for p in ended {
            self.stop(p, "session ended").await;
        }
    }

    fn gauges(&self, p: u16, owned: f64) {
        metrics::gauge!("partition_owned", "node" => self.node, "partition" => p.to_string()).set(owned);
        metrics::gauge!("partitions_owned", "node" => self.node).set(self.running.len() as f64);
    }
}

/// The first key of a service's partition locks: its schema's name,
/// hashed (FNV-1a), so services sharing a database don't share locks.
fn lock_key(name: &str) -> i32 {
    let hash = name.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    hash as i32
}

/// Connects the lease if needed (and joins the members: a lock of its own
/// under `members`, gone with the session); returns how many members hold
/// theirs now, itself included. Also keeps the lease from going idle.
async fn beat(conn: &mut Option<PgConnection>, target: &Target, members: i32) -> sqlx::Result<i64> {
    if conn.is_none() {
        let mut c = target.connect_watched().await?;
        sqlx::query("SELECT pg_try_advisory_lock($1, $2)")
            .bind(members)
            .bind(lock_key(instance()))
            .execute(&mut c)
            .await?;
        *conn = Some(c);
    }
    let c = conn.as_mut().expect("connected above");
    let live = sqlx::query(
        "SELECT count(*) FROM pg_locks
         WHERE locktype = 'advisory' AND objsubid = 2 AND granted AND classid::bigint = $1
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(i64::from(members as u32))
    .fetch_one(&mut *c)
    .await;
    match live {
        Ok(row) => Ok(row.get::<i64, _>(0).max(1)),
        Err(e) => {
            *conn = None;
            Err(e)
        }
    }
}

/// Takes partition `p` if no one holds it: its lock on the lease, then
/// the owner's row (which waits for batches of a previous owner that are
/// still open).
async fn claim(conn: &mut Option<PgConnection>, key: i32, p: u16) -> sqlx::Result<bool> {
    let Some(c) = conn.as_mut() else { return Ok(false) };
    let locked: bool = sqlx::query("SELECT pg_try_advisory_lock($1, $2)")
        .bind(key)
        .bind(i32::from(p))
        .fetch_one(&mut *c)
        .await?
        .get(0);
    if !locked {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO partition_owners (partition, owner) VALUES ($1, $2)
         ON CONFLICT (partition) DO UPDATE SET owner = EXCLUDED.owner, since = now(),
                                                claims = partition_owners.claims + 1",
    )
    .bind(i32::from(p))
    .bind(instance())
    .execute(&mut *c)
    .await?;
    Ok(true)
}

/// Before partition `p`'s session reconnects: is the lease alive (so the
/// lock is still held) and the partition still ours?
fn gate(lease: Arc<Mutex<Option<PgConnection>>>, p: u16) -> Gate {
    Arc::new(move || {
        let lease = lease.clone();
        Box::pin(async move {
            let mut conn = lease.lock().await;
            let Some(c) = conn.as_mut() else { return false };
            let owner = sqlx::query("SELECT owner FROM partition_owners WHERE partition = $1").bind(i32::from(p));
            match tokio::time::timeout(GATE_TIMEOUT, owner.fetch_optional(&mut *c)).await {
                Ok(Ok(Some(row))) => row.get::<String, _>(0) == instance(),
                Ok(Ok(None)) => false,
                _ => {
                    *conn = None;
                    false
                }
            }
        })
    })
}

/// Fails the transaction with [`DbError::NotOwner`] unless every one of
/// `partitions` is still this instance's, and keeps them so until it ends
/// (a claim by another instance waits for it). PostgreSQL only.
pub(crate) fn check(tx: &mut Tx<'_>, partitions: &[u16]) -> DbResult<()> {
    let wanted: Vec<i64> = partitions.iter().map(|&p| i64::from(p)).collect();
    let held: Vec<i64> = tx.query(
        "SELECT CAST(partition AS BIGINT) FROM partition_owners
         WHERE partition = ANY($1) AND owner = $2 FOR SHARE",
        &[&wanted, &instance()],
        |r| r.get::<i64>(0),
    )?;
    let lost: Vec<u16> = partitions.iter().copied().filter(|p| !held.contains(&i64::from(*p))).collect();
    if lost.is_empty() {
        Ok(())
    } else {
        Err(DbError::NotOwner(lost))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lock_keys_differ_per_schema() {
        assert_ne!(super::lock_key("inventory"), super::lock_key("orders"));
        assert_eq!(super::lock_key("orders"), super::lock_key("orders"));
    }
}
