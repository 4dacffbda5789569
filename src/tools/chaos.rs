//! `webshop chaos`: a fault-injecting MQTT proxy. Nodes connect to it as if
//! it were the broker; it forwards to the real broker and, with the given
//! probabilities (seeded, so a run can be repeated), duplicates, delays and
//! reorders the PUBLISH packets clients send, and cuts connections.
//!
//! Framing and parsing use rumqttc's `mqttbytes`; packets are forwarded as
//! the exact bytes received. A duplicated PUBLISH makes the broker PUBACK
//! twice; the proxy swallows the second PUBACK so the client's session
//! stays consistent (the subscribers still get both copies).
//!
//! One fault is deterministic: `withhold_ack` keeps back the PUBACK of a
//! client's first QoS 1 publish while the client sends more (its packet
//! ids wrap round to the withheld one), then cuts the connection: a client
//! must neither stall on the missing ack nor after the cut.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rumqttc::mqttbytes::{self, v4::Packet};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const MAX_PACKET: usize = 16 << 20;

/// Fault probabilities, each per client PUBLISH.
#[derive(Debug, Clone)]
pub struct Faults {
    pub duplicate: f64,
    pub delay: f64,
    /// Upper bound of a delay (uniform in 0..=max).
    pub max_delay: Duration,
    /// Hold the publish back until the next one from the same client passed.
    pub reorder: f64,
    /// Cut the client's connection (both directions) at this publish.
    pub cut: f64,
    pub seed: u64,
    /// Once per client id: never deliver the PUBACK of its first QoS 1
    /// publish; cut the connection after this many more publishes from it,
    /// or after `max_delay` if it sends no more.
    pub withhold_ack: Option<u32>,
}

/// What the proxy did, since start.
#[derive(Debug, Default)]
pub struct ChaosStats {
    pub connections: AtomicU64,
    pub publishes: AtomicU64,
    pub duplicated: AtomicU64,
    pub delayed: AtomicU64,
    pub reordered: AtomicU64,
    pub cuts: AtomicU64,
    pub acks_withheld: AtomicU64,
}

#[derive(Debug, Serialize, Clone, Copy)]
pub struct ChaosReport {
    pub connections: u64,
    pub publishes: u64,
    pub duplicated: u64,
    pub delayed: u64,
    pub reordered: u64,
    pub cuts: u64,
    pub acks_withheld: u64,
}

impl ChaosStats {
    pub fn report(&self) -> ChaosReport {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ChaosReport {
            connections: g(&self.connections),
            publishes: g(&self.publishes),
            duplicated: g(&self.duplicated),
            delayed: g(&self.delayed),
            reordered: g(&self.reordered),
            cuts: g(&self.cuts),
            acks_withheld: g(&self.acks_withheld),
        }
    }
}

impl std::fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} connections, {} publishes: {} duplicated, {} delayed, {} reordered, {} connections cut, {} acks withheld",
            self.connections,
            self.publishes,
            self.duplicated,
            self.delayed,
            self.reordered,
            self.cuts,
            self.acks_withheld
        )
    }
}

/// A running proxy.
pub struct Chaos {
    pub addr: SocketAddr,
    pub stats: Arc<ChaosStats>,
}

/// Binds `listen` and proxies to `upstream` until `shutdown`.
pub async fn start(
    listen: SocketAddr,
    upstream: SocketAddr,
    faults: Faults,
    shutdown: CancellationToken,
) -> std::io::Result<Chaos> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(ChaosStats::default());
    let st = stats.clone();
    let withheld_for: Arc<Mutex<HashSet<String>>> = Arc::default();
    tokio::spawn(async move {
        let mut conn_no = 0u64;
        loop {
            let (client, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                c = listener.accept() => match c { Ok(c) => c, Err(_) => continue },
            };
            conn_no += 1;
            st.connections.fetch_add(1, Ordering::Relaxed);
            let rng = SmallRng::seed_from_u64(faults.seed.wrapping_add(conn_no));
            let (faults, st, shutdown) = (faults.clone(), st.clone(), shutdown.clone());
            let withheld_for = withheld_for.clone();
            tokio::spawn(async move {
                if let Ok(server) = TcpStream::connect(upstream).await {
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    proxy(client, server, faults, rng, st, withheld_for, shutdown).await;
                }
            });
        }
    });
    Ok(Chaos { addr, stats })
}

/// Splits complete MQTT frames off `buf`: the raw bytes and the parsed packet.
fn next_frame(buf: &mut BytesMut) -> Result<Option<(Bytes, Packet)>, mqttbytes::Error> {
    let header = match mqttbytes::check(buf.iter(), MAX_PACKET) {
        Ok(h) => h,
        Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let raw = buf.split_to(header.frame_length()).freeze();
    let packet = Packet::read(&mut BytesMut::from(&raw[..]), MAX_PACKET)?;
    Ok(Some((raw, packet)))
}

async fn proxy(
    client: TcpStream,
    server: TcpStream,
    faults: Faults,
    mut rng: SmallRng,
    stats: Arc<ChaosStats>,
    withheld_for: Arc<Mutex<HashSet<String>>>,
    shutdown: CancellationToken,
) {
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let cut = CancellationToken::new();
    // PUBACKs to swallow, per packet id: one per duplicate sent.
    let swallow: Arc<Mutex<HashMap<u16, u32>>> = Arc::default();
    // `withhold_ack`: the packet id whose PUBACK is kept back, once known.
    let withheld: Arc<Mutex<Option<u16>>> = Arc::default();

    // One writer per direction, so delayed packets can be sent later.
    let (to_server, mut to_server_rx) = mpsc::unbounded_channel::<Bytes>();
    let writer = {
        let cut = cut.clone();
        tokio::spawn(async move {
            while let Some(b) = to_server_rx.recv().await {
                if server_wr.write_all(&b).await.is_err() {
                    break;
                }
            }
            cut.cancel();
        })
    };

    let upstream = {
        let (cut, swallow, withheld) = (cut.clone(), swallow.clone(), withheld.clone());
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            loop {
                tokio::select! {
                    _ = cut.cancelled() => break,
                    n = server_rd.read_buf(&mut buf) => if matches!(n, Ok(0) | Err(_)) { break },
                }
                loop {
                    match next_frame(&mut buf) {
                        Ok(Some((raw, packet))) => {
                            if let Packet::PubAck(ack) = &packet {
                                if *withheld.lock().expect("withheld lock") == Some(ack.pkid) {
                                    continue;
                                }
                                let mut sw = swallow.lock().expect("swallow lock");
                                if let Some(n) = sw.get_mut(&ack.pkid).filter(|n| **n > 0) {
                                    *n -= 1;
                                    continue;
                                }
                            }
                            if client_wr.write_all(&raw).await.is_err() {
                                cut.cancel();
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            cut.cancel();
                            return;
                        }
                    }
                }
            }
            cut.cancel();
        })
    };

    let mut buf = BytesMut::with_capacity(64 * 1024);
    // A publish held back to be overtaken. Released after the next publish,
    // or after `max_delay` if none comes: a network reorders, it doesn't
    // hold a packet forever (the client would stall waiting for its ack).
    let held: Arc<Mutex<Option<Bytes>>> = Arc::default();
    // `withhold_ack` on this connection: publishes left before the cut.
    let mut armed = false;
    let mut withhold_left: Option<u32> = None;
    'read: loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = cut.cancelled() => break,
            n = client_rd.read_buf(&mut buf) => if matches!(n, Ok(0) | Err(_)) { break },
        }
        loop {
            let (raw, packet) = match next_frame(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => break 'read,
            };
            let publish = match &packet {
                Packet::Publish(publish) => publish,
                Packet::Connect(connect) => {
                    armed = faults.withhold_ack.is_some()
                        && withheld_for.lock().expect("withheld lock").insert(connect.client_id.clone());
                    let _ = to_server.send(raw);
                    continue;
                }
                _ => {
                    let _ = to_server.send(raw);
                    continue;
                }
            };
            stats.publishes.fetch_add(1, Ordering::Relaxed);
            if let Some(left) = withhold_left.as_mut() {
                if *left == 0 {
                    stats.cuts.fetch_add(1, Ordering::Relaxed);
                    break 'read;
                }
                *left -= 1;
            } else if armed && publish.pkid != 0 {
                armed = false;
                stats.acks_withheld.fetch_add(1, Ordering::Relaxed);
                *withheld.lock().expect("withheld lock") = Some(publish.pkid);
                withhold_left = faults.withhold_ack;
                // A client that stops sending is cut all the same.
                let (cut, wait, stats) = (cut.clone(), faults.max_delay, stats.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    if !cut.is_cancelled() {
                        stats.cuts.fetch_add(1, Ordering::Relaxed);
                        cut.cancel();
                    }
                });
                let _ = to_server.send(raw);
                continue;
            }
            if rng.gen_bool(faults.cut.clamp(0.0, 1.0)) {
                stats.cuts.fetch_add(1, Ordering::Relaxed);
                break 'read;
            }
            if publish.pkid != 0 && rng.gen_bool(faults.duplicate.clamp(0.0, 1.0)) {
                stats.duplicated.fetch_add(1, Ordering::Relaxed);
                *swallow.lock().expect("swallow lock").entry(publish.pkid).or_default() += 1;
                let _ = to_server.send(raw.clone());
            }
            if rng.gen_bool(faults.delay.clamp(0.0, 1.0)) {
                stats.delayed.fetch_add(1, Ordering::Relaxed);
                let wait = rng.gen_range(0..=faults.max_delay.as_millis() as u64);
                let tx = to_server.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    let _ = tx.send(raw);
                });
                continue;
            }
            let free = held.lock().expect("held lock").is_none();
            if free && rng.gen_bool(faults.reorder.clamp(0.0, 1.0)) {
                stats.reordered.fetch_add(1, Ordering::Relaxed);
                *held.lock().expect("held lock") = Some(raw);
                let (held, tx, wait) = (held.clone(), to_server.clone(), faults.max_delay);
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    if let Some(h) = held.lock().expect("held lock").take() {
                        let _ = tx.send(h);
                    }
                });
                continue;
            }
            let _ = to_server.send(raw);
            if let Some(h) = held.lock().expect("held lock").take() {
                let _ = to_server.send(h);
            }
        }
    }
    // A held publish is lost with the connection, as if the network ate it;
    // the client never got its PUBACK and will send it again.
    cut.cancel();
    drop(to_server);
    let _ = upstream.await;
    let _ = writer.await;
}
