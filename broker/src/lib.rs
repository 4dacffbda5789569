//! Embedded MQTT 3.1.1 broker for the webshop, built on `rumqttd`.
//!
//! [`spawn`] starts the broker on its own threads and returns once it
//! answers MQTT connections; the `broker` binary wraps it with config
//! loading and Ctrl-C handling.
//!
//! # Durability
//!
//! Everything the broker holds lives in memory only: client sessions,
//! subscriptions, retained messages and messages queued for disconnected
//! clients. A broker restart (or crash) loses all of it. That is why every
//! service keeps its own transactional outbox and redelivers anything the
//! broker has not acknowledged, and why consumers deduplicate: the broker
//! is a transport, never the system of record.
//!
//! `rumqttd` has no shutdown API, so a started broker runs until the process
//! exits.
//!
//! # Security
//!
//! With an empty `users` map any client may connect, so [`spawn`] refuses to
//! listen on a non-loopback address unless `users` is set (TLS encrypts but
//! doesn't tell clients apart, so it doesn't lift that rule). With `users`
//! set, each user has a [`Role`] (`shared::topics`) and may publish and
//! subscribe only to that role's topics: the vendored rumqttd asks
//! [`acl_handler`] about every publish and subscription (see
//! vendor/README.md). A refused publish is acked and dropped, logged and
//! counted in `broker_refused_total`. With
//! `tls.cert_path` and `tls.key_path` the broker speaks MQTT over TLS on
//! `listen` (see [`tls`] for how, and why not rumqttd's own TLS); clients
//! are not asked for certificates.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use shared::topics::{Role, Topic};

pub mod tls;

/// How long [`spawn`] waits for the broker to accept connections.
const STARTUP_DEADLINE: Duration = Duration::from_secs(5);
/// Pause between two readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);
/// Longest user name or password an MQTT string can carry.
const MQTT_STRING_MAX: usize = u16::MAX as usize;

/// Environment variables with this prefix override the config file
/// (`WEBSHOP_BROKER__LISTEN`, `WEBSHOP_BROKER__USERS__ORDER`, ...).
pub const ENV_PREFIX: &str = "WEBSHOP_BROKER__";

/// Broker settings (`config/broker.toml`, environment `WEBSHOP_BROKER__*`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Address the MQTT listener binds. Default `127.0.0.1:1883`.
    pub listen: SocketAddr,
    /// Largest MQTT packet accepted from a client, in bytes, counted after
    /// the fixed header (a client that sends a bigger one is disconnected).
    /// The nodes' `bus.max_packet_bytes` must be the same value: they take
    /// what the broker took plus what forwarding adds, so an oversize
    /// message still reaches the services and is dead-lettered there.
    /// Default 4 MiB.
    pub max_payload_bytes: usize,
    /// Most packets the broker reads from one connection in a batch before
    /// handing them to its router (rumqttd `max_inflight_count`). Default 100.
    /// Not the window of unacked publishes towards a client: that is 500,
    /// fixed in `vendor/rumqttd` (see vendor/README.md).
    pub max_inflight: usize,
    /// rumqttd keeps each topic's messages in memory, in segments of about
    /// this many bytes; when a topic has `topic_log_segments` full segments
    /// the oldest is dropped. That bounds the broker's memory (about
    /// topics x size x (segments + 1)) and how much a persistent session
    /// that is offline can catch up on (older messages are skipped; the
    /// services' end-to-end retries cover them). Default 1 MiB.
    pub topic_log_segment_bytes: usize,
    /// Full segments kept per topic. Default 3: with every topic of orders,
    /// cancels and carts busy, the broker stays under 100 MB.
    pub topic_log_segments: usize,
    /// Most clients connected at once (nodes, fronts, tools). rumqttd sizes
    /// its connection tables by it up front. Default 1000.
    pub max_connections: usize,
    /// User name -> password. Empty (default) means no authentication,
    /// which is only allowed on a loopback `listen` address; every client
    /// then has the `tester` role (every topic).
    pub users: HashMap<String, String>,
    /// User name -> role (`front`, `order`, `inventory`, `tester`): the
    /// topics the user may publish and subscribe to (`shared::topics::Role`).
    /// A user named after a role has that role unless listed here; any
    /// other user must be. Default empty.
    pub roles: HashMap<String, Role>,
    /// With `users` set, also let clients without a login in, with the
    /// `tester` role. Only on a loopback `listen` address (`webshop up` sets
    /// it: testers inject on every topic while the nodes' own logins keep
    /// their roles). Default `false`.
    pub anonymous_tester: bool,
    /// The topic prefix of the shop, which the roles' topics are under.
    /// Default `webshop/v1/`.
    pub topic_prefix: String,
    /// Where the `broker` binary serves `GET /metrics` (Prometheus:
    /// `broker_connections`, `broker_subscriptions`, `broker_publishes_total`,
    /// `broker_failed_publishes_total`, `broker_refused_total`) and `GET /healthz`. Default
    /// `127.0.0.1:9042`. Under `webshop up` these series appear on every
    /// node's `/metrics` instead (one process, one registry).
    pub metrics_listen: SocketAddr,
    /// MQTT over TLS on `listen`: `cert_path` and `key_path` (PEM). Default
    /// unset: plain MQTT.
    pub tls: shared::config::TlsConfig,
    /// Log output of the `broker` binary.
    pub log: shared::config::LogConfig,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1883),
            max_payload_bytes: shared::config::DEFAULT_MAX_PACKET_BYTES,
            max_inflight: 100,
            topic_log_segment_bytes: 1024 * 1024,
            topic_log_segments: 3,
            max_connections: 1000,
            users: HashMap::new(),
            roles: HashMap::new(),
            anonymous_tester: false,
            topic_prefix: shared::topics::DEFAULT_PREFIX.into(),
            metrics_listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9042),
            tls: shared::config::TlsConfig::default(),
            log: shared::config::LogConfig::default(),
        }
    }
}

/// Prints user names only, never passwords.
impl std::fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut users: Vec<&str> = self.users.keys().map(String::as_str).collect();
        users.sort_unstable();
        f.debug_struct("BrokerConfig")
            .field("listen", &self.listen)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("max_inflight", &self.max_inflight)
            .field("topic_log_segment_bytes", &self.topic_log_segment_bytes)
            .field("topic_log_segments", &self.topic_log_segments)
            .field("max_connections", &self.max_connections)
            .field("users", &users)
            .field("roles", &self.roles.iter().collect::<std::collections::BTreeMap<_, _>>())
            .field("anonymous_tester", &self.anonymous_tester)
            .field("topic_prefix", &self.topic_prefix)
            .field("metrics_listen", &self.metrics_listen)
            .field("tls", &self.tls)
            .field("log", &self.log)
            .finish()
    }
}

impl BrokerConfig {
    /// Checks the settings `spawn` relies on; the error says what to change.
    fn validate(&self) -> anyhow::Result<()> {
        if self.users.is_empty() && !self.listen.ip().is_loopback() {
            bail!(
                "refusing to start the MQTT broker on {} without authentication: it is not a \
                 loopback address, so anyone who can reach it could read and publish every \
                 message. Set `users` (user name = password) in the broker config, e.g. \
                 WEBSHOP_BROKER__USERS__ORDER=secret, or listen on 127.0.0.1",
                self.listen
            );
        }
        if self.anonymous_tester && !self.listen.ip().is_loopback() {
            bail!(
                "broker config: anonymous_tester is only allowed on a loopback `listen` address, not {}",
                self.listen
            );
        }
        for user in self.roles.keys() {
            if !self.users.contains_key(user) {
                bail!("broker config: `roles` names {user:?}, which is not in `users`");
            }
        }
        for (user, password) in &self.users {
            if user.is_empty() {
                bail!("broker config: `users` contains an empty user name");
            }
            if self.role_of(user).is_none() {
                bail!(
                    "broker config: user {user:?} has no role: set roles.{user} to front, order, inventory \
                     or tester (e.g. WEBSHOP_BROKER__ROLES__{}=front), or name the user after its role",
                    user.to_uppercase()
                );
            }
            if password.is_empty() {
                bail!("broker config: user {user:?} has an empty password");
            }
            if user.len() > MQTT_STRING_MAX || password.len() > MQTT_STRING_MAX {
                bail!("broker config: user name or password of {user:?} exceeds {MQTT_STRING_MAX} bytes");
            }
        }
        if self.max_payload_bytes == 0 {
            bail!("broker config: max_payload_bytes must be > 0");
        }
        if self.max_inflight == 0 {
            bail!("broker config: max_inflight must be > 0");
        }
        if self.topic_log_segment_bytes < 1024 {
            bail!("broker config: topic_log_segment_bytes must be at least 1024");
        }
        if self.max_connections == 0 {
            bail!("broker config: max_connections must be > 0");
        }
        if self.topic_log_segments == 0 {
            bail!("broker config: topic_log_segments must be > 0");
        }
        Ok(())
    }

    /// The role of a user in `users`.
    pub fn role_of(&self, user: &str) -> Option<Role> {
        self.roles.get(user).copied().or_else(|| Role::parse(user))
    }

    /// The `rumqttd` configuration: one MQTT 3.1.1 (v4) TCP listener on
    /// `listen` (behind the TLS listener, a loopback port).
    fn to_rumqttd(&self, listen: SocketAddr) -> rumqttd::Config {
        let router = rumqttd::RouterConfig {
            max_connections: self.max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: self.topic_log_segment_bytes,
            max_segment_count: self.topic_log_segments,
            ..Default::default()
        };
        let connections = rumqttd::ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: self.max_payload_bytes,
            max_inflight_count: self.max_inflight,
            auth: (!self.users.is_empty()).then(|| self.users.clone()),
            external_auth: None,
            dynamic_filters: true,
            allow_anonymous: self.anonymous_tester,
            // Without users every client is a tester: nothing to check.
            acl: (!self.users.is_empty()).then(|| acl_handler(self)),
        };
        let server = rumqttd::ServerSettings {
            name: "mqtt-v4".into(),
            listen,
            tls: None,
            next_connection_delay_ms: 1,
            connections,
        };
        // The router pushes its meters (publishes since the last push,
        // connections) every second; `export_meters` turns them into metrics.
        // `MetricSettings` has private fields, hence serde. rumqttd 0.20's
        // timer panics unless alerts have an interval too (nobody reads them).
        let every = |secs: u64| -> rumqttd::MetricSettings {
            serde_json::from_value(serde_json::json!({ "push_interval": secs })).expect("valid metric settings")
        };
        rumqttd::Config {
            id: 0,
            router,
            v4: Some(HashMap::from([("1".to_owned(), server)])),
            metrics: Some(HashMap::from([
                (rumqttd::MetricType::Meters, every(1)),
                (rumqttd::MetricType::Alerts, every(3600)),
            ])),
            ..Default::default()
        }
    }
}

/// The permission check the vendored rumqttd runs for every publish,
/// subscription and last will: the user's role decides (a client without a
/// login is a tester; it only gets in with `anonymous_tester`). A refusal
/// is counted in `broker_refused_total{user, action, topic}` (`topic`: the
/// shop's topic below the prefix, or `other`) and logged, the first time
/// and then at every power of two per series, so a client that keeps
/// trying can't flood the log.
pub fn acl_handler(cfg: &BrokerConfig) -> rumqttd::AclHandler {
    let prefix = cfg.topic_prefix.clone();
    let roles: HashMap<String, Role> = cfg.users.keys().filter_map(|u| Some((u.clone(), cfg.role_of(u)?))).collect();
    let refusals: std::sync::Mutex<HashMap<(String, &'static str, &'static str), u64>> = Default::default();
    std::sync::Arc::new(move |user: Option<&str>, access: rumqttd::Access, topic: &str| {
        let role = match user {
            None => Some(Role::Tester),
            Some(u) => roles.get(u).copied(),
        };
        let (action, allowed) = match access {
            rumqttd::Access::Publish => ("publish", role.is_some_and(|r| r.may_publish(&prefix, topic))),
            rumqttd::Access::Subscribe => ("subscribe", role.is_some_and(|r| r.may_subscribe(&prefix, topic))),
        };
        if !allowed {
            let who = user.unwrap_or("anonymous").to_owned();
            let label = Topic::from_path(&prefix, topic).map_or("other", Topic::suffix);
            metrics::counter!("broker_refused_total", "user" => who.clone(), "action" => action, "topic" => label)
                .increment(1);
            let n = {
                let mut counts = refusals.lock().unwrap_or_else(|e| e.into_inner());
                let n = counts.entry((who.clone(), action, label)).or_default();
                *n += 1;
                *n
            };
            if n.is_power_of_two() {
                let role = role.map_or("none", Role::name);
                let what = match access {
                    rumqttd::Access::Publish => "acked and dropped the message",
                    rumqttd::Access::Subscribe => "answered with a failure code",
                };
                tracing::warn!(
                    user = %who, role, action, topic, refused = n,
                    "refused {action} to {topic:?}: role {role} may not {action} there; {what} \
                     (a node that logs in with the wrong user, or a client probing the bus)"
                );
            }
        }
        allowed
    })
}

/// Starts rumqttd on its own thread and returns once `listen` accepts TCP
/// connections and answers an MQTT CONNECT (polled for up to 5 s). With
/// TLS configured, rumqttd listens on a free loopback port and `listen`
/// is the TLS listener in front of it.
///
/// Fails when the configuration is unsafe or invalid (a non-loopback
/// `listen` address needs `users`; unreadable TLS files), when `listen`
/// cannot be bound (e.g. already in use), or when the broker thread dies or
/// the deadline passes before it is ready. Pass a concrete port: port 0
/// would bind but the chosen port cannot be read back.
///
/// The broker runs until the process exits; there is no way to stop it.
pub fn spawn(cfg: &BrokerConfig) -> anyhow::Result<()> {
    cfg.validate()?;
    if cfg.listen.port() == 0 {
        bail!("broker config: listen needs a concrete port, not 0");
    }
    let tls = shared::tls::server_config("tls", &cfg.tls)?;
    // rumqttd binds on its own thread and only logs a bind failure; binding
    // here first turns "address in use" into an error for the caller and
    // keeps the readiness probe from talking to some other process.
    let public = TcpListener::bind(cfg.listen)
        .with_context(|| format!("MQTT broker cannot listen on {} (already in use?)", cfg.listen))?;
    let (listen, tls_front) = match tls {
        None => {
            drop(public);
            (cfg.listen, None)
        }
        Some(tls) => {
            // The TLS listener keeps `listen`; rumqttd gets a free loopback
            // port (free a moment ago: the probe below checks it is ours).
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .context("no free loopback port for the broker behind TLS")?
                .port();
            (SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port), Some((public, tls)))
        }
    };

    let config = cfg.to_rumqttd(listen);
    let thread: JoinHandle<Result<(), String>> = std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            export_meters(&broker);
            let result = broker.start();
            // start() only returns when every listener has stopped.
            match &result {
                Ok(()) => tracing::error!(%listen, "MQTT broker stopped"),
                Err(e) => tracing::error!(%listen, error = %e, "MQTT broker failed"),
            }
            result.map_err(|e| e.to_string())
        })
        .context("cannot spawn the MQTT broker thread")?;

    let probe_addr = probe_address(listen);
    let credentials = cfg.users.iter().min_by_key(|(user, _)| user.as_str());
    let deadline = Instant::now() + STARTUP_DEADLINE;
    loop {
        if thread.is_finished() {
            let why = match thread.join() {
                Ok(Ok(())) => "it stopped (see the log for the listener error)".to_owned(),
                Ok(Err(e)) => e,
                Err(_) => "it panicked".to_owned(),
            };
            bail!("MQTT broker on {listen} exited before accepting connections: {why}");
        }
        let last_error = match probe(probe_addr, credentials, deadline) {
            Ok(()) => {
                if let Some((public, tls)) = tls_front {
                    tls::spawn(public, tls, listen)?;
                    tracing::info!(listen = %cfg.listen, behind = %listen, "MQTT broker ready (TLS)");
                } else {
                    tracing::info!(%listen, "MQTT broker ready");
                }
                return Ok(());
            }
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(last_error.context(format!("MQTT broker on {listen} not ready after {STARTUP_DEADLINE:?}")));
        }
        std::thread::sleep(PROBE_INTERVAL);
    }
}

/// Where to connect to reach a listener bound to `listen`.
fn probe_address(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, listen.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, listen.port()).into(),
        _ => listen,
    }
}

/// One readiness probe: TCP connect, MQTT 3.1.1 CONNECT, expect an accepting
/// CONNACK, close. A bare connect-and-close would make rumqttd log an
/// error for the missing CONNECT packet.
fn probe(addr: SocketAddr, credentials: Option<(&String, &String)>, deadline: Instant) -> anyhow::Result<()> {
    let budget =
        deadline.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut stream = TcpStream::connect_timeout(&addr, budget).with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(budget))?;
    stream.set_write_timeout(Some(budget))?;
    stream.set_nodelay(true)?;

    stream.write_all(&connect_packet(credentials))?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).context("no CONNACK from the broker")?;
    match connack {
        [0x20, 0x02, _, 0x00] => {}
        [0x20, 0x02, _, code] => bail!("broker refused the readiness probe, return code {code}"),
        other => bail!("unexpected reply to CONNECT: {other:02x?}"),
    }
    // Close without DISCONNECT: rumqttd logs a DISCONNECT followed by the
    // socket close as an error ("already gone"), a plain close at info.
    Ok(())
}

/// An MQTT 3.1.1 CONNECT: clean session, empty client id (the broker assigns
/// one), 10 s keep-alive, optional user name and password.
fn connect_packet(credentials: Option<(&String, &String)>) -> Vec<u8> {
    fn put_str(buf: &mut Vec<u8>, s: &[u8]) {
        // Lengths were checked against MQTT_STRING_MAX in validate().
        buf.extend_from_slice(&(s.len() as u16).to_be_bytes());
        buf.extend_from_slice(s);
    }
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.push(0x04); // protocol level 3.1.1
    let flags = if credentials.is_some() { 0xC2 } else { 0x02 }; // user+password, clean session
    body.push(flags);
    body.extend_from_slice(&10u16.to_be_bytes()); // keep-alive seconds; rumqttd rejects 0
    put_str(&mut body, b""); // client id
    if let Some((user, password)) = credentials {
        put_str(&mut body, user.as_bytes());
        put_str(&mut body, password.as_bytes());
    }

    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

/// Feeds the router's meters (connections, publishes) into the process's
/// Prometheus registry, from a thread of their own.
fn export_meters(broker: &rumqttd::Broker) {
    let Ok(link) = broker.meters() else {
        tracing::warn!("broker meters unavailable; no broker metrics");
        return;
    };
    shared::metrics::handle();
    let spawned = std::thread::Builder::new().name("mqtt-broker-meters".into()).spawn(move || {
        // `MetersLink::recv` doesn't block; `next` does, on a runtime.
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        runtime.block_on(async {
            while let Ok(meters) = link.next().await {
                for meter in meters {
                    if let rumqttd::Meter::Router(_, r) = meter {
                        metrics::gauge!("broker_connections").set(r.total_connections as f64);
                        metrics::gauge!("broker_subscriptions").set(r.total_subscriptions as f64);
                        // Each push carries the counts since the previous one.
                        metrics::counter!("broker_publishes_total").increment(r.total_publishes as u64);
                        metrics::counter!("broker_failed_publishes_total").increment(r.failed_publishes as u64);
                    }
                }
            }
        });
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the broker meters thread");
    }
}

/// What the binary does: load the config (`file`, then `WEBSHOP_BROKER__*`),
/// start the broker, and run until SIGTERM/Ctrl-C.
pub async fn main_with_config(file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let cfg: BrokerConfig = shared::config::load(file, ENV_PREFIX)?;
    let telemetry = shared::telemetry::init("broker", &cfg.log)?;
    tracing::info!(config = ?cfg, ?file, "starting MQTT broker");
    // Bound first: a port already taken stops the broker before any
    // client has connected to it.
    let metrics_listener = tokio::net::TcpListener::bind(cfg.metrics_listen)
        .await
        .with_context(|| format!("metrics_listen: cannot listen on {}", cfg.metrics_listen))?;
    spawn(&cfg)?;
    let scheme = if cfg.tls.is_enabled() { "mqtts" } else { "mqtt" };
    println!("broker listening on {scheme}://{}", cfg.listen);
    println!("broker metrics on http://{}/metrics", cfg.metrics_listen);
    let token = tokio_util::sync::CancellationToken::new();
    shared::shutdown::cancel_on_signal(token.clone());
    let router = axum::Router::new()
        .route("/metrics", axum::routing::get(|| async { shared::metrics::render() }))
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    shared::http::serve(metrics_listener, router, None, token.clone()).await?;
    tracing::info!("signal received, exiting");
    // `exit` runs no destructors: flush the spans first.
    drop(telemetry);
    // rumqttd has no shutdown; its threads end with the process.
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

    const TEST_DEADLINE: Duration = Duration::from_secs(10);

    fn free_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    fn local_config() -> BrokerConfig {
        BrokerConfig { listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port()), ..Default::default() }
    }

    fn client(cfg: &BrokerConfig, id: &str, login: Option<(&str, &str)>) -> (AsyncClient, EventLoop) {
        let mut opts = MqttOptions::new(id, cfg.listen.ip().to_string(), cfg.listen.port());
        opts.set_keep_alive(Duration::from_secs(5));
        if let Some((user, password)) = login {
            opts.set_credentials(user, password);
        }
        AsyncClient::new(opts, 16)
    }

    /// Polls the event loop until `want` matches an incoming packet; panics
    /// on a connection error or when the deadline passes.
    async fn wait_for<T>(eventloop: &mut EventLoop, what: &str, mut want: impl FnMut(&Packet) -> Option<T>) -> T {
        let result = tokio::time::timeout(TEST_DEADLINE, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        if let Some(found) = want(&packet) {
                            return found;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => panic!("connection error while waiting for {what}: {e}"),
                }
            }
        })
        .await;
        result.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    #[tokio::test]
    async fn publish_and_receive_qos1() {
        let cfg = local_config();
        spawn(&cfg).unwrap();

        let (client, mut eventloop) = client(&cfg, "broker-test-pubsub", None);
        wait_for(&mut eventloop, "CONNACK", |p| matches!(p, Packet::ConnAck(_)).then_some(())).await;
        client.subscribe("webshop/test/#", QoS::AtLeastOnce).await.unwrap();
        wait_for(&mut eventloop, "SUBACK", |p| matches!(p, Packet::SubAck(_)).then_some(())).await;

        client.publish("webshop/test/hello", QoS::AtLeastOnce, false, b"hello broker".to_vec()).await.unwrap();
        let publish = wait_for(&mut eventloop, "PUBLISH", |p| match p {
            Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await;
        assert_eq!(publish.topic, "webshop/test/hello");
        assert_eq!(publish.qos, QoS::AtLeastOnce);
        assert_eq!(&publish.payload[..], b"hello broker");
    }

    #[tokio::test]
    async fn users_are_enforced() {
        let mut cfg = local_config();
        cfg.users.insert("order".into(), "s3cret".into());
        spawn(&cfg).unwrap(); // the readiness probe logs in as "order"

        let (_good, mut eventloop) = client(&cfg, "broker-test-good", Some(("order", "s3cret")));
        wait_for(&mut eventloop, "CONNACK", |p| matches!(p, Packet::ConnAck(_)).then_some(())).await;

        // rumqttd closes the connection without a CONNACK on bad credentials.
        for login in [Some(("order", "wrong")), None] {
            let (_bad, mut eventloop) = client(&cfg, "broker-test-bad", login);
            let outcome = connack_or_error(&mut eventloop, "the broker to refuse the login").await;
            assert!(outcome.is_err(), "login {login:?} accepted: {outcome:?}");
        }
    }

    /// Each user may publish and subscribe to its role's topics only: a
    /// refused QoS 1 publish is still acked (the client goes on) but
    /// reaches no subscriber, a refused subscription gets 0x80, and
    /// anonymous clients get in as testers only with `anonymous_tester`.
    #[tokio::test]
    async fn roles_are_enforced_per_user() {
        let mut cfg = local_config();
        cfg.users.insert("front".into(), "f-secret".into());
        cfg.users.insert("shop-order".into(), "o-secret".into());
        cfg.roles.insert("shop-order".into(), Role::Order);
        cfg.anonymous_tester = true;
        spawn(&cfg).unwrap();
        let path = |t: Topic| t.path(shared::topics::DEFAULT_PREFIX);

        // An anonymous tester sees everything.
        let (tester, mut tester_loop) = client(&cfg, "broker-test-acl-tester", None);
        wait_for(&mut tester_loop, "CONNACK", |p| matches!(p, Packet::ConnAck(_)).then_some(())).await;
        tester.subscribe("webshop/v1/#", QoS::AtLeastOnce).await.unwrap();
        let codes = wait_for(&mut tester_loop, "SUBACK", |p| match p {
            Packet::SubAck(s) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await;
        assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]);

        let (front, mut front_loop) = client(&cfg, "broker-test-acl-front", Some(("front", "f-secret")));
        wait_for(&mut front_loop, "CONNACK", |p| matches!(p, Packet::ConnAck(_)).then_some(())).await;
        front.subscribe(path(Topic::InStock), QoS::AtLeastOnce).await.unwrap();
        let codes = wait_for(&mut front_loop, "SUBACK", |p| match p {
            Packet::SubAck(s) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await;
        assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Failure], "front subscribed to in-stock");
        // Forbidden, then allowed, on one connection: both acked, only the
        // second delivered (the broker keeps one publisher's order).
        front.publish(path(Topic::InStock), QoS::AtLeastOnce, false, b"forged".to_vec()).await.unwrap();
        front.publish(path(Topic::OrdersSend), QoS::AtLeastOnce, false, b"allowed".to_vec()).await.unwrap();
        let mut acks = 0;
        wait_for(&mut front_loop, "two PUBACKs", |p| {
            acks += matches!(p, Packet::PubAck(_)) as usize;
            (acks == 2).then_some(())
        })
        .await;
        let got = wait_for(&mut tester_loop, "the allowed send", |p| match p {
            Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await;
        assert_eq!((got.topic.as_str(), &got.payload[..]), (path(Topic::OrdersSend).as_str(), &b"allowed"[..]));

        // A user with an explicit role.
        let (order, mut order_loop) = client(&cfg, "broker-test-acl-order", Some(("shop-order", "o-secret")));
        wait_for(&mut order_loop, "CONNACK", |p| matches!(p, Packet::ConnAck(_)).then_some(())).await;
        order.publish(path(Topic::Released), QoS::AtLeastOnce, false, b"forged".to_vec()).await.unwrap();
        order.publish(path(Topic::OrdersStatus), QoS::AtLeastOnce, false, b"status".to_vec()).await.unwrap();
        let mut acks = 0;
        wait_for(&mut order_loop, "two PUBACKs", |p| {
            acks += matches!(p, Packet::PubAck(_)) as usize;
            (acks == 2).then_some(())
        })
        .await;
        let got = wait_for(&mut tester_loop, "the status", |p| match p {
            Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await;
        assert_eq!(&got.payload[..], b"status");

        let metrics = shared::metrics::render();
        for series in [
            r#"broker_refused_total{user="front",action="publish",topic="inventory/in-stock"} 1"#,
            r#"broker_refused_total{user="front",action="subscribe",topic="inventory/in-stock"} 1"#,
            r#"broker_refused_total{user="shop-order",action="publish",topic="inventory/released"} 1"#,
        ] {
            assert!(metrics.contains(series), "{series} missing:\n{metrics}");
        }
    }

    #[test]
    fn users_need_a_role_and_anonymous_testers_need_loopback() {
        let mut cfg = local_config();
        cfg.users.insert("shop".into(), "pw".into());
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("\"shop\" has no role") && err.contains("WEBSHOP_BROKER__ROLES__SHOP"), "{err}");
        cfg.roles.insert("shop".into(), Role::Front);
        cfg.validate().unwrap();
        cfg.roles.insert("ghost".into(), Role::Tester);
        assert!(cfg.validate().unwrap_err().to_string().contains("\"ghost\", which is not in `users`"));
        let cfg = BrokerConfig {
            listen: "0.0.0.0:1883".parse().unwrap(),
            users: HashMap::from([("front".into(), "pw".into())]),
            anonymous_tester: true,
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("anonymous_tester"));
    }

    /// The connection's CONNACK, or the error that ended it first.
    async fn connack_or_error(eventloop: &mut rumqttc::EventLoop, what: &str) -> Result<rumqttc::ConnAck, String> {
        let first = async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => return Ok(ack),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        };
        tokio::time::timeout(TEST_DEADLINE, first).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    /// MQTT over TLS works, a client that connects and stays silent holds
    /// up no one (it would with rumqttd's own TLS), and plain MQTT on the
    /// TLS port gets nowhere.
    #[tokio::test]
    async fn tls_listener() {
        let pki = shared::test_pki::TestPki::generate();
        let cfg = BrokerConfig {
            tls: shared::config::TlsConfig { cert_path: Some(pki.cert.clone()), key_path: Some(pki.key.clone()) },
            ..local_config()
        };
        spawn(&cfg).unwrap();
        let _silent = tokio::net::TcpStream::connect(cfg.listen).await.unwrap();

        let (tls_client, mut eventloop) = client(&cfg, "broker-test-tls", None);
        let bus = shared::config::BusConfig { ca_path: Some(pki.ca.clone()), ..Default::default() };
        eventloop.mqtt_options.set_transport(shared::tls::bus_transport(&bus).unwrap());
        wait_for(&mut eventloop, "CONNACK over TLS", |p| matches!(p, Packet::ConnAck(_)).then_some(())).await;
        tls_client.subscribe("webshop/tls/#", QoS::AtLeastOnce).await.unwrap();
        wait_for(&mut eventloop, "SUBACK", |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
        tls_client.publish("webshop/tls/hello", QoS::AtLeastOnce, false, b"over tls".to_vec()).await.unwrap();
        let publish = wait_for(&mut eventloop, "PUBLISH", |p| match p {
            Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await;
        assert_eq!(&publish.payload[..], b"over tls");

        let (_plain, mut eventloop) = client(&cfg, "broker-test-plain", None);
        let outcome = connack_or_error(&mut eventloop, "the TLS port to drop a plain client").await;
        assert!(outcome.is_err(), "plain MQTT accepted on the TLS port: {outcome:?}");
    }

    #[test]
    fn bad_tls_files_fail_the_start_naming_the_key() {
        let cfg = BrokerConfig {
            tls: shared::config::TlsConfig {
                cert_path: Some("/nonexistent/cert.pem".into()),
                key_path: Some("/nonexistent/key.pem".into()),
            },
            ..local_config()
        };
        let err = format!("{:#}", spawn(&cfg).unwrap_err());
        assert!(err.contains("tls.cert_path") && err.contains("/nonexistent/cert.pem"), "{err}");
    }

    #[test]
    fn refuses_public_listener_without_users() {
        let cfg = BrokerConfig { listen: "0.0.0.0:1883".parse().unwrap(), ..Default::default() };
        let err = spawn(&cfg).unwrap_err().to_string();
        assert!(err.contains("Set `users`"), "{err}");
    }

    #[test]
    fn refuses_port_in_use() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let cfg = BrokerConfig { listen: taken.local_addr().unwrap(), ..Default::default() };
        let err = format!("{:#}", spawn(&cfg).unwrap_err());
        assert!(err.contains("cannot listen"), "{err}");
    }

    #[test]
    fn debug_hides_passwords() {
        let mut cfg = BrokerConfig::default();
        cfg.users.insert("inventory".into(), "hunter2".into());
        let debug = format!("{cfg:?}");
        assert!(debug.contains("inventory"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn shipped_config_file_matches_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/broker.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let from_file: BrokerConfig = shared::config::load(Some(&path), "WEBSHOP_BROKER_TEST_UNUSED__").unwrap();
        let defaults = BrokerConfig::default();
        assert_eq!(format!("{from_file:?}"), format!("{defaults:?}"), "{text}");
    }
}
