//! Layered configuration: built-in defaults, then a TOML file, then
//! environment variables (`PREFIX__SECTION__KEY`, `__` separates levels).
//!
//! Every node's config struct derives `Deserialize` with `#[serde(default)]`
//! so a missing file or key falls back to the embedded default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Loads `T` from its defaults, the optional TOML `file`, and environment
/// variables starting with `env_prefix` (e.g. `WEBSHOP_ORDER__`).
///
/// The error names the offending key, e.g. `invalid type: found string
/// "abc", expected u16 for key "HTTP.LISTEN"`.
pub fn load<T>(file: Option<&Path>, env_prefix: &str) -> anyhow::Result<T>
where
    T: DeserializeOwned + Serialize + Default,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(file) = file {
        if !file.exists() {
            anyhow::bail!("config file {} does not exist", file.display());
        }
        figment = figment.merge(Toml::file(file));
    }
    figment = figment.merge(Env::prefixed(env_prefix).split("__"));
    figment.extract().with_context(|| match file {
        Some(f) => format!("invalid configuration in {} or {env_prefix}* environment", f.display()),
        None => format!("invalid configuration in {env_prefix}* environment"),
    })
}

/// The packet limit the embedded broker enforces and the nodes expect of
/// any broker by default: 4 MiB.
pub const DEFAULT_MAX_PACKET_BYTES: usize = 4 * 1024 * 1024;

/// Where a node finds the MQTT broker and how it identifies itself.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// Broker host. Default `127.0.0.1`.
    pub host: String,
    /// Broker port. Default `1883`.
    pub port: u16,
    /// MQTT client id; must be unique per connected process. A persistent
    /// session is keyed on it, so keep it stable across restarts.
    pub client_id: String,
    /// Topic prefix shared by every node. Default `webshop/v1/`.
    pub topic_prefix: String,
    /// Username, when the broker requires one.
    pub username: Option<String>,
    /// Password, when the broker requires one. Never printed.
    pub password: Option<String>,
    /// MQTT keep-alive in seconds. Default 5.
    pub keep_alive_secs: u64,
    /// The broker's packet limit, in bytes: set it to what the broker
    /// accepts (embedded broker `max_payload_bytes`, Mosquitto
    /// `max_packet_size`), the same on every node. The node takes packets up
    /// to this plus the few bytes a broker adds when it forwards one
    /// (`bus::FORWARD_HEADROOM`), so every message the broker accepted
    /// arrives and is dead-lettered if it is oversize, instead of breaking
    /// the connection. Far above the application's own message limit
    /// (64 KiB). Default 4 MiB ([`DEFAULT_MAX_PACKET_BYTES`]).
    pub max_packet_bytes: usize,
    /// How many partitions the services' topics are split into, for
    /// several instances of a service (docs/SCALING.md): the same on every
    /// node, fronts included, and fixed for the deployment's life (changing
    /// it needs a drained shop). Default 1: no partitions.
    pub partitions: u16,
    /// Connect with TLS (MQTT over TLS, usually port 8883). Default `false`.
    /// The broker's certificate must name `host`. Without `ca_path` the
    /// system's root certificates are trusted.
    pub tls: bool,
    /// PEM file of the CA(s) that signed the broker's certificate; setting
    /// it turns `tls` on, and then only these CAs are trusted (a private
    /// CA, e.g. self-signed). Default unset.
    pub ca_path: Option<PathBuf>,
}

impl BusConfig {
    /// Whether the connection uses TLS (`tls`, or a `ca_path` given).
    pub fn uses_tls(&self) -> bool {
        self.tls || self.ca_path.is_some()
    }
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: String::new(),
            topic_prefix: crate::topics::DEFAULT_PREFIX.into(),
            username: None,
            password: None,
            keep_alive_secs: 5,
            max_packet_bytes: DEFAULT_MAX_PACKET_BYTES,
            partitions: 1,
            tls: false,
            ca_path: None,
        }
    }
}

impl std::fmt::Debug for BusConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("topic_prefix", &self.topic_prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("keep_alive_secs", &self.keep_alive_secs)
            .field("max_packet_bytes", &self.max_packet_bytes)
            .field("partitions", &self.partitions)
            .field("tls", &self.tls)
            .field("ca_path", &self.ca_path)
            .finish()
    }
}

/// A service's database: a SQLite file (the default) or PostgreSQL. Its
/// `Debug` hides a password written into `url` (as `password` is hidden).
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DbConfig {
    /// `postgres://user@host:port/database` to use PostgreSQL; unset
    /// (default) for the SQLite file at `path`. Put the password in
    /// `password` (from the environment) or `PGPASSWORD`, not in a file.
    pub url: Option<String>,
    /// The PostgreSQL password; set it through the environment
    /// (`WEBSHOP_ORDER__DB__PASSWORD`, ...).
    pub password: Option<Secret>,
    /// PostgreSQL: the schema the service's tables live in (created if
    /// missing), so that services can share one database. Default: the
    /// service's name.
    pub schema: String,
    /// Path of the SQLite file; created with its parent directory.
    pub path: PathBuf,
    /// SQLite: `FULL` (default: every commit is fsynced, an acknowledged
    /// order survives power loss) or `NORMAL` (WAL default; survives a
    /// process crash, may lose the last commits on power loss), `OFF` for
    /// throwaway databases. PostgreSQL keeps its own `synchronous_commit`.
    pub synchronous: Synchronous,
    /// SQLite: WAL pages (4 KiB each) after which a commit checkpoints:
    /// copies the WAL into the database file, and the next transaction
    /// starts the WAL over. A page changed many times in that window is
    /// copied once, so a larger window writes less per order; the commit
    /// that checkpoints takes longer, and the WAL file stays about this long.
    pub checkpoint_pages: u32,
    /// How long the machinery's records are kept before a prune (every
    /// minute) deletes them; they bound the database's size at a steady
    /// order rate (docs/OPERATIONS.md, "Disk").
    pub retention: Retention,
}

/// How long each of the machinery's records is kept, in seconds. At least
/// 60 each.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Sent events, with their payloads (the timeline shows them). Default
    /// 86400 (24 h).
    pub sent_events_secs: f64,
    /// Received message ids (the inbox). A copy that arrives later is
    /// applied again, which the business keys make harmless for its
    /// effect. Default 604800 (7 days).
    pub inbox_secs: f64,
    /// Timeline notes. Default 604800 (7 days).
    pub timeline_secs: f64,
    /// Carts untouched this long with nothing held: checked out, or
    /// abandoned. Default 2592000 (30 days); at least 3600, and best well
    /// above inventory's `hold_secs`.
    pub carts_secs: f64,
}

impl Default for Retention {
    fn default() -> Self {
        Self { sent_events_secs: 86_400.0, inbox_secs: 604_800.0, timeline_secs: 604_800.0, carts_secs: 2_592_000.0 }
    }
}

impl Retention {
    fn validate(&self) -> anyhow::Result<()> {
        for (key, v) in [
            ("sent_events_secs", self.sent_events_secs),
            ("inbox_secs", self.inbox_secs),
            ("timeline_secs", self.timeline_secs),
        ] {
            anyhow::ensure!(v.is_finite() && v >= 60.0, "db.retention.{key} must be at least 60 (seconds), not {v}");
        }
        let carts = self.carts_secs;
        anyhow::ensure!(
            carts.is_finite() && carts >= 3600.0,
            "db.retention.carts_secs must be at least 3600 (seconds), not {carts}"
        );
        Ok(())
    }
}

impl Default for DbConfig {
    fn default() -> Self {
        Self {
            url: None,
            password: None,
            schema: "webshop".into(),
            path: PathBuf::from("data/service.db"),
            synchronous: Synchronous::Full,
            checkpoint_pages: 10_000,
            retention: Retention::default(),
        }
    }
}

impl std::fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("password", &self.password)
            .field("schema", &self.schema)
            .field("path", &self.path)
            .field("synchronous", &self.synchronous)
            .field("checkpoint_pages", &self.checkpoint_pages)
            .field("retention", &self.retention)
            .finish()
    }
}

impl DbConfig {
    /// The backend `url` names: PostgreSQL for `postgres://` or
    /// `postgresql://`, SQLite otherwise.
    pub fn backend(&self) -> crate::db::Backend {
        match self.url.as_deref() {
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => crate::db::Backend::Postgres,
            _ => crate::db::Backend::Sqlite,
        }
    }

    /// Checks what serde can't: a `url` that is neither unset nor a
    /// PostgreSQL URL.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.retention.validate()?;
        match self.url.as_deref() {
            Some(u) if self.backend() == crate::db::Backend::Sqlite => {
                anyhow::bail!("db.url must be a postgres:// URL (or unset for SQLite at db.path), not `{u}`")
            }
            _ if self.schema.is_empty()
                || !self.schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') =>
            {
                anyhow::bail!("db.schema must be a plain lower-case name (a-z, 0-9, _), not `{}`", self.schema)
            }
            _ => Ok(()),
        }
    }
}

/// `url` with its password, if it has one, hidden: for logs and messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    match rest.split_once('@') {
        Some((user, host)) if user.contains(':') => {
            format!("{scheme}://{}:***@{host}", user.split(':').next().unwrap_or_default())
        }
        _ => url.to_owned(),
    }
}

/// SQLite's `synchronous` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Synchronous {
    #[serde(alias = "off")]
    Off,
    #[serde(alias = "normal")]
    Normal,
    #[serde(alias = "full")]
    Full,
    #[serde(alias = "extra")]
    Extra,
}

impl std::str::FromStr for Synchronous {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.to_ascii_uppercase().as_str() {
            "OFF" => Ok(Synchronous::Off),
            "NORMAL" => Ok(Synchronous::Normal),
            "FULL" => Ok(Synchronous::Full),
            "EXTRA" => Ok(Synchronous::Extra),
            _ => anyhow::bail!("synchronous must be OFF, NORMAL, FULL or EXTRA, not `{s}`"),
        }
    }
}

impl Synchronous {
    pub fn as_str(self) -> &'static str {
        match self {
            Synchronous::Off => "OFF",
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
            Synchronous::Extra => "EXTRA",
        }
    }

    pub(crate) fn sqlx(self) -> sqlx::sqlite::SqliteSynchronous {
        use sqlx::sqlite::SqliteSynchronous as S;
        match self {
            Synchronous::Off => S::Off,
            Synchronous::Normal => S::Normal,
            Synchronous::Full => S::Full,
            Synchronous::Extra => S::Extra,
        }
    }
}

/// The certificate a server presents (HTTPS on a node, MQTT over TLS on
/// the embedded broker). Both paths unset (default): plain TCP.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's own certificate first.
    pub cert_path: Option<PathBuf>,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_path: Option<PathBuf>,
}

impl TlsConfig {
    pub fn is_enabled(&self) -> bool {
        self.cert_path.is_some() || self.key_path.is_some()
    }
}

/// Log output and trace export settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter directive. Default `info`. `RUST_LOG` wins if set.
    pub filter: String,
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// Base URL of an OpenTelemetry collector's OTLP/HTTP receiver, e.g.
    /// `http://otel-collector:4318`; spans go to `<url>/v1/traces` as
    /// protobuf. Unset (default): no export, unless the standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set.
    pub otlp_endpoint: Option<String>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { filter: "info".into(), format: LogFormat::Text, otlp_endpoint: None }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Seconds as a `Duration`, for config fields kept as plain numbers.
pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// A secret from config (password, token). Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn a_password_in_a_url_is_hidden_and_nothing_else_changes() {
        assert_eq!(redact_url("postgres://shop:s3cret@db:5432/webshop"), "postgres://shop:***@db:5432/webshop");
        assert_eq!(redact_url("postgres://shop@db/webshop"), "postgres://shop@db/webshop");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn a_db_config_prints_without_the_password_in_its_url() {
        let db = super::DbConfig {
            url: Some("postgres://shop:s3cret@db:5432/webshop".into()),
            password: Some(super::Secret::new("other-secret")),
            ..Default::default()
        };
        let shown = format!("{db:#?}");
        assert!(!shown.contains("s3cret") && !shown.contains("other-secret"), "{shown}");
        assert!(shown.contains("postgres://shop:***@db:5432/webshop"), "{shown}");
    }
}
