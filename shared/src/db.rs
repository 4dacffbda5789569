//! A service's SQLite database: one writer, a pool of readers.
//!
//! Every write runs on the service's writer thread, which owns the one
//! writer connection: [`Db::write`] sends it a closure, the thread runs it
//! inside `BEGIN IMMEDIATE` with cached prepared statements, writes the
//! events the closure enqueued to the outbox, and commits. A consumer batch
//! is therefore one hand-off to that thread, not one per statement (sqlx
//! runs each statement on its connection's own thread and wakes the caller
//! for every row). Reads go through the sqlx pool `reader`; WAL lets them
//! run beside the writer.

use std::ops::Deref;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use rusqlite::{Connection, TransactionBehavior};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use crate::config::DbConfig;
use crate::outbox::{Committed, Pending, Sent};

/// Tables of the shared machinery: inbox, outbox, parked events, dead letters.
pub const SHARED_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS inbox (
    message_id  TEXT PRIMARY KEY,
    topic       TEXT NOT NULL,
    order_id    TEXT,
    received_at INTEGER NOT NULL
) WITHOUT ROWID;
-- For the prune: ids come from many producers, so the table's order is not
-- arrival order. Entries append at the index's end.
CREATE INDEX IF NOT EXISTS inbox_by_time ON inbox(received_at);
-- `seq` is the rowid, not AUTOINCREMENT (which writes sqlite_sequence on
-- every insert): a new row still gets max(seq) + 1, and the relay, the only
-- reader of seq, only needs unsent rows in write order. No index on
-- message_id: nothing looks an event up by it, and ids are fresh UUIDv7s.
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,
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

/// Prepared statements kept per writer connection (every statement of the
/// hot path, with room to spare).
const STATEMENT_CACHE: usize = 64;

/// A write transaction on the writer thread: the SQL connection (as
/// `Deref`), plus what the transaction enqueued for the outbox and the
/// trace context those events carry.
pub struct Tx<'c> {
    sql: rusqlite::Transaction<'c>,
    pub(crate) events: Vec<Pending>,
    /// The `traceparent` stamped on enqueued events (the message being
    /// handled, set by the consumer).
    pub(crate) traceparent: Option<String>,
}

impl Deref for Tx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.sql
    }
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

enum Command {
    Run(Job),
    /// Checkpoint the WAL into the main file and stop the thread.
    Close(oneshot::Sender<()>),
}

/// A service's database handles. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    writer: mpsc::UnboundedSender<Command>,
    pub reader: SqlitePool,
    /// Published events the next write transaction marks sent.
    pub(crate) sent: Sent,
    /// Committed events, handed to the relay without a read.
    pub(crate) committed: Committed,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Run(_) => "Run",
            Command::Close(_) => "Close",
        })
    }
}

impl Db {
    /// Opens (creating if needed) the database, applies `SHARED_SCHEMA` and
    /// the service's own idempotent `schema`, and starts the writer thread.
    pub async fn open(cfg: &DbConfig, schema: &str) -> anyhow::Result<Db> {
        if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating database directory {}", dir.display()))?;
        }
        let synchronous = SqliteSynchronous::from_str(&cfg.synchronous).map_err(|_| {
            anyhow::anyhow!("db.synchronous must be FULL, NORMAL, OFF or EXTRA, not `{}`", cfg.synchronous)
        })?;
        let (opened_tx, opened) = oneshot::channel();
        let (writer, jobs) = mpsc::unbounded_channel();
        let path = cfg.path.clone();
        let schema = format!("{SHARED_SCHEMA}{}{schema}", crate::timeline::SCHEMA);
        let level = cfg.synchronous.to_ascii_uppercase();
        let checkpoint_pages = cfg.checkpoint_pages;
        std::thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || match open_writer(&path, &level, checkpoint_pages, &schema) {
                Ok(conn) => {
                    let _ = opened_tx.send(Ok(()));
                    serve(conn, jobs);
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                }
            })
            .context("starting the database writer thread")?;
        opened
            .await
            .context("the database writer thread stopped")?
            .with_context(|| format!("opening database {}", cfg.path.display()))?;
        // No ping before each acquire (sqlx's default): it is one more round
        // trip to the connection's thread, and a broken SQLite connection
        // fails its next statement anyway.
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(&cfg.path)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(synchronous)
                    .busy_timeout(Duration::from_secs(5))
                    .read_only(true),
            )
            .await
            .with_context(|| format!("opening read pool on {}", cfg.path.display()))?;
        Ok(Db { writer, reader, sent: Sent::default(), committed: Committed::default() })
    }

    /// Runs `f` in one write transaction (`BEGIN IMMEDIATE`) on the writer
    /// thread, then writes the events it enqueued to the outbox and
    /// commits. The transaction also marks sent the events the relay got
    /// acknowledged since the last one. An error from `f` rolls everything
    /// back. The transaction runs to its end even if the caller stops
    /// waiting.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<rusqlite::Error> + Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> Result<T, E> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let (sent, committed) = (self.sent.clone(), self.committed.clone());
        let job: Job = Box::new(move |conn| {
            let _ = done.send(transaction(conn, &sent, &committed, f));
        });
        if self.writer.send(Command::Run(job)).is_err() {
            return Err(stopped().into());
        }
        // A closed channel: the job panicked (logged by the thread).
        result.await.unwrap_or_else(|_| Err(stopped().into()))
    }

    /// Folds the WAL into the main file, closes the writer and the read
    /// pool, so the `.db` file alone is a complete copy after a clean stop.
    pub async fn close(&self) {
        self.reader.close().await;
        let (done, closed) = oneshot::channel();
        if self.writer.send(Command::Close(done)).is_ok() {
            let _ = closed.await;
        }
    }
}

fn stopped() -> rusqlite::Error {
    misuse("the database writer is closed")
}

/// An error of ours (not SQLite's) that fails a write transaction.
pub fn misuse(why: &str) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISUSE), Some(why.to_owned()))
}

fn transaction<T, E, F>(conn: &mut Connection, sent: &Sent, committed: &Committed, f: F) -> Result<T, E>
where
    E: From<rusqlite::Error>,
    F: FnOnce(&mut Tx<'_>) -> Result<T, E>,
{
    let sql = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Returned to `sent` on any way out but the commit.
    let marks = sent.take();
    marks.write(&sql)?;
    let mut tx = Tx { sql, events: Vec::new(), traceparent: None };
    let out = f(&mut tx)?;
    let events = std::mem::take(&mut tx.events);
    let events = crate::outbox::write_all(&tx, events)?;
    tx.sql.commit()?;
    marks.committed();
    committed.push(events);
    Ok(out)
}

fn open_writer(
    path: &std::path::Path,
    synchronous: &str,
    checkpoint_pages: u32,
    schema: &str,
) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(%mode, "SQLite did not switch to WAL; readers will wait for the writer");
    }
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "wal_autocheckpoint", checkpoint_pages)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.execute_batch(schema)?;
    Ok(conn)
}

/// The writer thread: runs jobs in order until closed.
fn serve(mut conn: Connection, mut jobs: mpsc::UnboundedReceiver<Command>) {
    while let Some(cmd) = jobs.blocking_recv() {
        match cmd {
            Command::Run(job) => {
                // A panicking job rolls its transaction back (the
                // `Transaction` drops) and fails only its own caller.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut conn))).is_err() {
                    tracing::error!("a database write panicked; it was rolled back");
                }
            }
            Command::Close(done) => {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "WAL checkpoint at shutdown failed");
                }
                drop(conn);
                let _ = done.send(());
                return;
            }
        }
    }
}

/// Deletes the oldest rows of `table`, an append-only log ordered by its
/// rowid `key`, up to the first row for which `keep` (an SQL condition on
/// `?1`, here a time) holds. It visits only the rows it deletes (and the
/// first one it keeps), not the whole table: the prunes of the outbox and
/// the timeline.
pub fn prune_log(conn: &Connection, table: &str, key: &str, keep: &str, at: i64) -> rusqlite::Result<usize> {
    conn.execute(
        &format!(
            "DELETE FROM {table} WHERE {key} < coalesce(
                 (SELECT {key} FROM {table} WHERE {keep} ORDER BY {key} LIMIT 1),
                 (SELECT max({key}) + 1 FROM {table}))"
        ),
        [at],
    )
}

/// Milliseconds since the Unix epoch, the unit of every timestamp column.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
