//! Opening a service's SQLite database: one writer connection (all writes
//! go through it, each transaction `BEGIN IMMEDIATE`), a pool of readers.
//! WAL lets readers run beside the writer.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

use crate::config::DbConfig;

/// Tables of the shared machinery: inbox, outbox, parked events, dead letters.
pub const SHARED_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS inbox (
    message_id  TEXT PRIMARY KEY,
    topic       TEXT NOT NULL,
    order_id    TEXT,
    received_at INTEGER NOT NULL
) WITHOUT ROWID;
-- `seq` is the rowid, not AUTOINCREMENT (which writes sqlite_sequence on
-- every insert): a new row still gets max(seq) + 1, and the relay, the only
-- reader of seq, only needs unsent rows in write order.
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL UNIQUE,
    topic      TEXT NOT NULL,
    order_id   TEXT,
    payload    BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    sent_at    INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox(seq) WHERE sent_at IS NULL;
CREATE TABLE IF NOT EXISTS parked (
    message_id      TEXT PRIMARY KEY,
    topic           TEXT NOT NULL,
    order_id        TEXT NOT NULL,
    payload         BLOB NOT NULL,
    reason          TEXT NOT NULL,
    parked_at       INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS parked_by_order ON parked(order_id);
CREATE TABLE IF NOT EXISTS dead_letters (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    topic         TEXT NOT NULL,
    message_id    TEXT,
    order_id      TEXT,
    payload       BLOB NOT NULL,
    payload_bytes INTEGER NOT NULL,
    reason        TEXT NOT NULL,
    at            INTEGER NOT NULL
);
"#;

/// A service's database handles.
#[derive(Clone, Debug)]
pub struct Db {
    /// Exactly one connection: SQLite has one writer anyway, and a single
    /// connection means no SQLITE_BUSY between our own writers.
    pub writer: SqlitePool,
    pub reader: SqlitePool,
}

impl Db {
    /// Opens (creating if needed) the database and applies `SHARED_SCHEMA`
    /// and the service's own idempotent `schema`.
    pub async fn open(cfg: &DbConfig, schema: &str) -> anyhow::Result<Db> {
        if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating database directory {}", dir.display()))?;
        }
        let synchronous = SqliteSynchronous::from_str(&cfg.synchronous).map_err(|_| {
            anyhow::anyhow!("db.synchronous must be FULL, NORMAL, OFF or EXTRA, not `{}`", cfg.synchronous)
        })?;
        let options = SqliteConnectOptions::new()
            .filename(&cfg.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        // No ping before each acquire (sqlx's default): it is one more round
        // trip to the connection's thread per transaction, and a broken
        // SQLite connection fails its next statement anyway.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await
            .with_context(|| format!("opening database {}", cfg.path.display()))?;
        sqlx::raw_sql(SHARED_SCHEMA).execute(&writer).await.context("creating shared tables")?;
        sqlx::raw_sql(crate::timeline::SCHEMA).execute(&writer).await.context("creating the timeline table")?;
        sqlx::raw_sql(schema).execute(&writer).await.context("creating service tables")?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.read_only(true))
            .await
            .with_context(|| format!("opening read pool on {}", cfg.path.display()))?;
        Ok(Db { writer, reader })
    }

    /// A write transaction. `IMMEDIATE` takes the write lock up front, so a
    /// transaction that reads then writes can't fail with SQLITE_BUSY midway.
    pub async fn begin(&self) -> sqlx::Result<Transaction<'static, Sqlite>> {
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }
}

impl Db {
    /// Folds the WAL into the main file and closes both pools, so the
    /// `.db` file alone is a complete copy after a clean stop.
    pub async fn close(&self) {
        self.reader.close().await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.writer).await {
            tracing::warn!(error = %e, "WAL checkpoint at shutdown failed");
        }
        self.writer.close().await;
    }
}

/// Most rows one multi-row `INSERT` writes. Batches are written in chunks
/// of this many rows (and one shorter remainder), so sqlx's statement cache
/// holds at most this many variants of each statement.
pub const INSERT_CHUNK: usize = 16;

/// `{head} VALUES (?, …), … {tail}`: `rows` rows of `cols` placeholders.
pub fn values_sql(head: &str, cols: usize, rows: usize, tail: &str) -> String {
    let row = format!("({})", vec!["?"; cols].join(", "));
    format!("{head} VALUES {} {tail}", vec![row; rows].join(", "))
}

/// Milliseconds since the Unix epoch, the unit of every timestamp column.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
