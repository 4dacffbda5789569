//! The SQLite backend: one writer connection (rusqlite, cached prepared
//! statements, run synchronously on the writer thread) and a read-only
//! sqlx pool beside it (WAL lets readers run beside the writer).

use std::time::Duration;

use anyhow::Context;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, TransactionBehavior};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::Connection as _;

use super::{DbResult, Reader, Row, Value, WriterConn, ACQUIRE_TIMEOUT, P};
use crate::config::DbConfig;

/// Prepared statements kept per writer connection (every statement of the
/// hot path, with room to spare).
const STATEMENT_CACHE: usize = 64;

/// Opens the file (creating it and its directory), applies the migrations,
/// opens the writer and the read pool.
pub(super) async fn open(cfg: &DbConfig, migrator: &Migrator) -> anyhow::Result<(Reader, WriterConn)> {
    if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating database directory {}", dir.display()))?;
    }
    let options = SqliteConnectOptions::new()
        .filename(&cfg.path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(cfg.synchronous.sqlx())
        .busy_timeout(Duration::from_secs(5));
    let mut migrating = sqlx::SqliteConnection::connect_with(&options.clone().create_if_missing(true))
        .await
        .with_context(|| format!("opening database {}", cfg.path.display()))?;
    migrator.run(&mut migrating).await.with_context(|| format!("migrating database {}", cfg.path.display()))?;
    migrating.close().await?;

    let writer = open_writer(cfg).with_context(|| format!("opening database {}", cfg.path.display()))?;
    // No ping before each acquire (sqlx's default): it is one more round
    // trip to the connection's thread, and a broken SQLite connection
    // fails its next statement anyway.
    let reader = SqlitePoolOptions::new()
        .max_connections(4)
        .test_before_acquire(false)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options.read_only(true))
        .await
        .with_context(|| format!("opening read pool on {}", cfg.path.display()))?;
    Ok((Reader::Sqlite(reader), WriterConn::Sqlite(writer)))
}

fn open_writer(cfg: &DbConfig) -> rusqlite::Result<Connection> {
    let conn = Connection::open(&cfg.path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(%mode, "SQLite did not switch to WAL; readers will wait for the writer");
    }
    conn.pragma_update(None, "synchronous", cfg.synchronous.as_str())?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "wal_autocheckpoint", cfg.checkpoint_pages)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// A write transaction that takes the write lock up front: a deferred
/// one that reads, then writes, fails at once with `SQLITE_BUSY`.
pub(super) fn begin(conn: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
}

/// A [`P`] as rusqlite binds it.
struct Bound<'a>(P<'a>);

impl rusqlite::ToSql for Bound<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self.0.dyn_value() {
            Value::Int(v) => ValueRef::Integer(v),
            Value::Text(v) => ValueRef::Text(v.as_bytes()),
            Value::Blob(v) => ValueRef::Blob(v),
            // Refused before binding (`no_arrays`).
            Value::Null(_) | Value::Array(_) => ValueRef::Null,
        }))
    }
}

fn bound<'a>(params: &'a [P<'a>]) -> impl Iterator<Item = Bound<'a>> + 'a {
    params.iter().map(|p| Bound(*p))
}

pub(super) fn execute(conn: &Connection, sql: &str, params: &[P<'_>]) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(rusqlite::params_from_iter(bound(params)))
}

pub(super) fn query<T>(
    conn: &Connection,
    sql: &str,
    params: &[P<'_>],
    mut f: impl FnMut(&Row<'_>) -> DbResult<T>,
) -> DbResult<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(bound(params)))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(f(&Row::Writer(r))?);
    }
    Ok(out)
}

/// Folds the WAL into the main file and closes the writer.
pub(super) fn close(conn: Connection) {
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        tracing::warn!(error = %e, "WAL checkpoint at shutdown failed");
    }
}
