//! A service's database, behind one seam: SQLite (the embedded default) or
//! PostgreSQL, picked by `db.url`.
//!
//! Every write runs on the service's writer thread, which owns the one
//! writer connection: [`Db::write`] sends it a closure, the thread runs it
//! inside one transaction (`BEGIN IMMEDIATE` on SQLite, READ COMMITTED on
//! PostgreSQL), writes the events the closure enqueued to the outbox, and
//! commits. A consumer batch is therefore one hand-off to that thread, not
//! one per statement. Reads go through the async pool [`Db::reader`].
//!
//! Code above this module sees [`Tx`] (a unit of work) and [`Reader`],
//! never a driver type: both run SQL text with [`Param`]s and hand back
//! [`Row`]s, on either backend. Where the two dialects agree (most
//! statements: `$1` parameters, `ON CONFLICT`, `RETURNING`, `CAST`), a
//! statement is written once; where they differ, the caller picks the text
//! by [`Tx::backend`]. Each backend has its own numbered migrations
//! ([`Migrations`]), applied on open.

pub(crate) mod events;
pub(crate) mod postgres;
mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::{Migration, Migrator};
use sqlx::Row as _;
use tokio::sync::{mpsc, oneshot};

use crate::config::DbConfig;
use events::{Committed, Pending, Sent};

/// Which engine a database runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored row that doesn't decode: a bug or a hand edit, named by its
    /// key, never read as a default.
    #[error("{table} row {key} does not decode: {why}")]
    Corrupt { table: &'static str, key: String, why: String },
    #[error("the database writer is closed")]
    Closed,
    /// Another instance took over these partitions: a batch read from
    /// their sessions must not commit (see `crate::ownership`).
    #[error("partitions {0:?} are no longer this instance's")]
    NotOwner(Vec<u16>),
    /// A rule of ours that fails the transaction.
    #[error("{0}")]
    Misuse(String),
}

impl DbError {
    /// A row of `table` with key `key` that doesn't decode.
    pub fn corrupt(table: &'static str, key: impl ToString, why: impl ToString) -> DbError {
        DbError::Corrupt { table, key: key.to_string(), why: why.to_string() }
    }

    /// A failure that retrying the whole transaction may cure: a
    /// serialization failure or deadlock (PostgreSQL `40001`, `40P01`), a
    /// unique violation from a racing insert (`23505`), a lost connection.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Sqlx(sqlx::Error::Database(e)) => {
                matches!(e.code().as_deref(), Some("40001" | "40P01" | "23505"))
            }
            DbError::Sqlx(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed) => true,
            DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            }
            _ => false,
        }
    }
}

pub type DbResult<T> = Result<T, DbError>;

/// A parameter value, in the few types the tables use.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Int(i64),
    Text(&'a str),
    Blob(&'a [u8]),
    /// NULL of the given kind (PostgreSQL types every parameter).
    Null(Kind),
    /// A PostgreSQL array (`$1::text[]`): a batch's rows in one statement
    /// (`unnest`). SQLite has none; its statements take one row at a time.
    Array(Array<'a>),
}

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Int,
    Text,
    Blob,
    Array,
}

/// The arrays a PostgreSQL statement takes: one column of a batch's rows.
#[derive(Debug, Clone, Copy)]
pub enum Array<'a> {
    Int(&'a [i64]),
    OptInt(&'a [Option<i64>]),
    Text(&'a [String]),
    OptText(&'a [Option<String>]),
    Blob(&'a [Vec<u8>]),
}

/// A value that binds as a statement parameter on either backend.
pub trait Param: Sync {
    const KIND: Kind;
    fn value(&self) -> Value<'_>;
}

impl Param for i64 {
    const KIND: Kind = Kind::Int;
    fn value(&self) -> Value<'_> {
        Value::Int(*self)
    }
}
impl Param for str {
    const KIND: Kind = Kind::Text;
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}
impl Param for String {
    const KIND: Kind = Kind::Text;
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}
impl Param for [u8] {
    const KIND: Kind = Kind::Blob;
    fn value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}
impl Param for Vec<u8> {
    const KIND: Kind = Kind::Blob;
    fn value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}
macro_rules! array_param {
    ($($t:ty => $v:ident),*) => {$(
        impl Param for Vec<$t> {
            const KIND: Kind = Kind::Array;
            fn value(&self) -> Value<'_> {
                Value::Array(Array::$v(self))
            }
        }
    )*};
}
array_param!(i64 => Int, Option<i64> => OptInt, String => Text, Option<String> => OptText, Vec<u8> => Blob);

impl<T: Param + ?Sized> Param for &T {
    const KIND: Kind = T::KIND;
    fn value(&self) -> Value<'_> {
        (**self).value()
    }
}
impl<T: Param> Param for Option<T> {
    const KIND: Kind = T::KIND;
    fn value(&self) -> Value<'_> {
        match self {
            Some(v) => v.value(),
            None => Value::Null(T::KIND),
        }
    }
}

/// One parameter as the statement APIs take it.
pub type P<'a> = &'a dyn DynParam;

/// Object-safe face of [`Param`].
pub trait DynParam: Sync {
    fn dyn_value(&self) -> Value<'_>;
}
impl<T: Param + ?Sized> DynParam for T {
    fn dyn_value(&self) -> Value<'_> {
        self.value()
    }
}

/// A result row of either backend.
pub enum Row<'a> {
    Writer(&'a rusqlite::Row<'a>),
    SqliteRead(&'a sqlx::sqlite::SqliteRow),
    Postgres(&'a sqlx::postgres::PgRow),
}

impl Row<'_> {
    /// Column `i`, decoded as `T`.
    pub fn get<T: Column>(&self, i: usize) -> DbResult<T> {
        match self {
            Row::Writer(r) => Ok(T::writer(r, i)?),
            Row::SqliteRead(r) => Ok(T::sqlite(r, i)?),
            Row::Postgres(r) => Ok(T::postgres(r, i)?),
        }
    }
}

/// A column type both backends decode.
pub trait Column: Sized {
    fn writer(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self>;
    fn sqlite(r: &sqlx::sqlite::SqliteRow, i: usize) -> sqlx::Result<Self>;
    fn postgres(r: &sqlx::postgres::PgRow, i: usize) -> sqlx::Result<Self>;
}

macro_rules! column {
    ($($t:ty),*) => {$(
        impl Column for $t {
            fn writer(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
                r.get(i)
            }
            fn sqlite(r: &sqlx::sqlite::SqliteRow, i: usize) -> sqlx::Result<Self> {
                r.try_get(i)
            }
            fn postgres(r: &sqlx::postgres::PgRow, i: usize) -> sqlx::Result<Self> {
                r.try_get(i)
            }
        }
    )*};
}
column!(i64, String, Vec<u8>, Option<i64>, Option<String>, Option<Vec<u8>>);

/// The read pool.
#[derive(Clone, Debug)]
pub enum Reader {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

macro_rules! bind_all {
    ($q:expr, $params:expr) => {{
        let mut q = $q;
        for p in $params {
            q = match p.dyn_value() {
                $crate::db::Value::Int(v) => q.bind(v),
                $crate::db::Value::Text(v) => q.bind(v),
                $crate::db::Value::Blob(v) => q.bind(v),
                $crate::db::Value::Null($crate::db::Kind::Int) => q.bind(None::<i64>),
                $crate::db::Value::Null($crate::db::Kind::Text) => q.bind(None::<&str>),
                $crate::db::Value::Null($crate::db::Kind::Blob) => q.bind(None::<&[u8]>),
                $crate::db::Value::Null($crate::db::Kind::Array) => q.bind(None::<i64>),
                $crate::db::Value::Array(a) => $crate::db::BindArray::bind_array(q, a),
            };
        }
        q
    }};
}
pub(crate) use bind_all;

/// How a statement binds an [`Array`]: as an array on PostgreSQL. SQLite
/// refuses array parameters before binding ([`no_arrays`]).
pub(crate) trait BindArray<'q>: Sized {
    fn bind_array(self, a: Array<'q>) -> Self;
}

impl<'q> BindArray<'q> for sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    fn bind_array(self, a: Array<'q>) -> Self {
        match a {
            Array::Int(v) => self.bind(v),
            Array::OptInt(v) => self.bind(v),
            Array::Text(v) => self.bind(v),
            Array::OptText(v) => self.bind(v),
            Array::Blob(v) => self.bind(v),
        }
    }
}

impl<'q> BindArray<'q> for sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    fn bind_array(self, _: Array<'q>) -> Self {
        self.bind(None::<i64>)
    }
}

/// SQLite has no array parameters: a statement that binds one is a bug.
fn no_arrays(sql: &str, params: &[P<'_>]) -> DbResult<()> {
    match params.iter().any(|p| matches!(p.dyn_value(), Value::Array(_) | Value::Null(Kind::Array))) {
        true => Err(DbError::Misuse(format!("array parameter on SQLite: {sql}"))),
        false => Ok(()),
    }
}

impl Reader {
    pub fn backend(&self) -> Backend {
        match self {
            Reader::Sqlite(_) => Backend::Sqlite,
            Reader::Postgres(_) => Backend::Postgres,
        }
    }

    /// Every row of `sql`, each mapped by `f`.
    pub async fn fetch<T>(&self, sql: &str, params: &[P<'_>], f: impl Fn(&Row<'_>) -> DbResult<T>) -> DbResult<Vec<T>> {
        match self {
            Reader::Sqlite(pool) => {
                no_arrays(sql, params)?;
                let rows = bind_all!(sqlx::query(sql), params).fetch_all(pool).await?;
                rows.iter().map(|r| f(&Row::SqliteRead(r))).collect()
            }
            Reader::Postgres(pool) => {
                let rows = bind_all!(sqlx::query(sql), params).fetch_all(pool).await?;
                rows.iter().map(|r| f(&Row::Postgres(r))).collect()
            }
        }
    }

    /// The first row of `sql`, if any, mapped by `f`.
    pub async fn fetch_opt<T>(
        &self,
        sql: &str,
        params: &[P<'_>],
        f: impl Fn(&Row<'_>) -> DbResult<T>,
    ) -> DbResult<Option<T>> {
        match self {
            Reader::Sqlite(pool) => {
                no_arrays(sql, params)?;
                let row = bind_all!(sqlx::query(sql), params).fetch_optional(pool).await?;
                row.as_ref().map(|r| f(&Row::SqliteRead(r))).transpose()
            }
            Reader::Postgres(pool) => {
                let row = bind_all!(sqlx::query(sql), params).fetch_optional(pool).await?;
                row.as_ref().map(|r| f(&Row::Postgres(r))).transpose()
            }
        }
    }

    /// A single `BIGINT` (a count, a sum cast to `BIGINT`).
    pub async fn scalar(&self, sql: &str, params: &[P<'_>]) -> DbResult<i64> {
        self.fetch_opt(sql, params, |r| r.get::<i64>(0)).await?.ok_or(DbError::Misuse(format!("no row from {sql}")))
    }

    async fn close(&self) {
        match self {
            Reader::Sqlite(pool) => pool.close().await,
            Reader::Postgres(pool) => pool.close().await,
        }
    }
}

/// A write transaction on the writer thread: statements, plus what the
/// transaction enqueued for the outbox and the trace context those events
/// carry.
pub struct Tx<'c> {
    conn: TxConn<'c>,
    pub(crate) events: Vec<Pending>,
    /// The `traceparent` stamped on enqueued events (the message being
    /// handled, set by the consumer).
    pub(crate) traceparent: Option<String>,
}

enum TxConn<'c> {
    Sqlite(rusqlite::Transaction<'c>),
    Postgres(&'c mut postgres::Session),
}

impl Tx<'_> {
    pub fn backend(&self) -> Backend {
        match self.conn {
            TxConn::Sqlite(_) => Backend::Sqlite,
            TxConn::Postgres(_) => Backend::Postgres,
        }
    }

    /// Runs a statement; returns the rows it changed.
    pub fn execute(&mut self, sql: &str, params: &[P<'_>]) -> DbResult<u64> {
        match &mut self.conn {
            TxConn::Sqlite(c) => {
                no_arrays(sql, params)?;
                Ok(sqlite::execute(c, sql, params)? as u64)
            }
            TxConn::Postgres(s) => s.execute(sql, params),
        }
    }

    /// Every row of `sql`, each mapped by `f`.
    pub fn query<T>(
        &mut self,
        sql: &str,
        params: &[P<'_>],
        mut f: impl FnMut(&Row<'_>) -> DbResult<T>,
    ) -> DbResult<Vec<T>> {
        match &mut self.conn {
            TxConn::Sqlite(c) => {
                no_arrays(sql, params)?;
                sqlite::query(c, sql, params, f)
            }
            TxConn::Postgres(s) => s.query(sql, params)?.iter().map(|r| f(&Row::Postgres(r))).collect(),
        }
    }

    /// The first row of `sql`, if any, mapped by `f`.
    pub fn query_opt<T>(
        &mut self,
        sql: &str,
        params: &[P<'_>],
        f: impl FnMut(&Row<'_>) -> DbResult<T>,
    ) -> DbResult<Option<T>> {
        Ok(self.query(sql, params, f)?.into_iter().next())
    }

    /// A single `BIGINT`.
    pub fn scalar(&mut self, sql: &str, params: &[P<'_>]) -> DbResult<i64> {
        self.query_opt(sql, params, |r| r.get::<i64>(0))?.ok_or(DbError::Misuse(format!("no row from {sql}")))
    }

    /// Rows changed so far in this transaction (a debug check of the
    /// consumer's).
    pub(crate) fn changes(&self) -> u64 {
        match &self.conn {
            TxConn::Sqlite(c) => c.total_changes(),
            TxConn::Postgres(s) => s.changes,
        }
    }
}

/// A service's numbered migrations, one set per backend (the shared
/// machinery's tables come first, in every service's database).
pub struct Migrations {
    pub sqlite: Migrator,
    pub postgres: Migrator,
}

/// The shared machinery's migrations (`shared/migrations/`): versions
/// below 100; a service numbers its own from 100 up.
static SHARED_SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static SHARED_POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// The shared migrations followed by `service`'s, as one migrator.
fn combined(shared: &Migrator, service: &Migrator) -> Migrator {
    let mut all: Vec<Migration> = shared.migrations.iter().chain(service.migrations.iter()).cloned().collect();
    all.sort_by_key(|m| m.version);
    // A database migrated by a newer version still opens: during a rolling
    // upgrade an older instance may start after a newer one, and
    // migrations only add.
    Migrator { migrations: all.into(), ignore_missing: true, ..Migrator::DEFAULT }
}

type Job = Box<dyn FnOnce(&mut WriterConn) + Send>;

enum Command {
    Run(Job),
    /// Flush (SQLite: checkpoint the WAL into the main file) and stop.
    Close(oneshot::Sender<()>),
}

/// What the writer thread owns.
enum WriterConn {
    Sqlite(rusqlite::Connection),
    Postgres(Box<postgres::Session>),
}

/// A service's database handles. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    writer: mpsc::UnboundedSender<Command>,
    pub reader: Reader,
    /// Published events the next write transaction marks sent.
    pub(crate) sent: Sent,
    /// Committed events, handed to the relay without a read.
    pub(crate) committed: Committed,
    /// PostgreSQL: how to open more sessions (partition ownership).
    pub(crate) pg: Option<Arc<postgres::Target>>,
    /// How long the prune keeps what (`outbox::prune`).
    pub(crate) retention: crate::config::Retention,
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
    /// Opens the database `cfg` names (SQLite file, created if needed, or a
    /// PostgreSQL server), applies the shared and the service's migrations,
    /// and starts the writer thread.
    pub async fn open(cfg: &DbConfig, migrations: &Migrations) -> anyhow::Result<Db> {
        let (reader, conn, pg) = match cfg.backend() {
            Backend::Sqlite => {
                let migrator = combined(&SHARED_SQLITE, &migrations.sqlite);
                let (reader, conn) = sqlite::open(cfg, &migrator).await?;
                (reader, conn, None)
            }
            Backend::Postgres => {
                let migrator = combined(&SHARED_POSTGRES, &migrations.postgres);
                let (reader, conn, target) = postgres::open(cfg, &migrator).await?;
                (reader, conn, Some(Arc::new(target)))
            }
        };
        let (writer, jobs) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || serve(conn, jobs))
            .context("starting the database writer thread")?;
        let retention = cfg.retention;
        Ok(Db { writer, reader, sent: Sent::default(), committed: Committed::default(), pg, retention })
    }

    pub fn backend(&self) -> Backend {
        self.reader.backend()
    }

    /// Runs `f` in one write transaction on the writer thread, then writes
    /// the events it enqueued to the outbox and commits. The transaction
    /// also marks sent the events the relay got acknowledged since the last
    /// one. An error from `f` rolls everything back. The transaction runs
    /// to its end even if the caller stops waiting.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> Result<T, E> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let (sent, committed) = (self.sent.clone(), self.committed.clone());
        let job: Job = Box::new(move |conn| {
            let _ = done.send(transaction(conn, &sent, &committed, f));
        });
        if self.writer.send(Command::Run(job)).is_err() {
            return Err(DbError::Closed.into());
        }
        // A closed channel: the job panicked (logged by the thread).
        result.await.unwrap_or_else(|_| Err(DbError::Closed.into()))
    }

    /// How long the database keeps what (`db.retention`).
    pub fn retention(&self) -> crate::config::Retention {
        self.retention
    }

    /// Forgets records older than `keep_secs`: runs `delete(tx, before_ms,
    /// chunk)`, a statement removing at most `chunk` rows older than
    /// `before_ms`, in a transaction of its own until one removes fewer
    /// (short transactions: the consumer's batches go on between them).
    /// Returns how many rows in all.
    pub async fn prune_in_chunks<F>(&self, keep_secs: f64, chunk: i64, delete: F) -> DbResult<u64>
    where
        F: Fn(&mut Tx<'_>, i64, i64) -> DbResult<u64> + Clone + Send + 'static,
    {
        let before = crate::clock::now_ms() - (keep_secs * 1000.0) as i64;
        let mut total = 0;
        loop {
            let delete = delete.clone();
            let n = self.write(move |tx| delete(tx, before, chunk)).await?;
            total += n;
            if n < chunk as u64 {
                return Ok(total);
            }
        }
    }

    /// Closes the writer and the read pool; on SQLite, folds the WAL into
    /// the main file first, so the `.db` file alone is a complete copy after
    /// a clean stop.
    pub async fn close(&self) {
        self.reader.close().await;
        let (done, closed) = oneshot::channel();
        if self.writer.send(Command::Close(done)).is_ok() {
            let _ = closed.await;
        }
    }
}

fn transaction<T, E, F>(conn: &mut WriterConn, sent: &Sent, committed: &Committed, f: F) -> Result<T, E>
where
    E: From<DbError>,
    F: FnOnce(&mut Tx<'_>) -> Result<T, E>,
{
    let conn = match conn {
        WriterConn::Sqlite(c) => TxConn::Sqlite(sqlite::begin(c).map_err(DbError::from)?),
        WriterConn::Postgres(s) => TxConn::Postgres(s.begin().map_err(E::from)?),
    };
    let mut tx = Tx { conn, events: Vec::new(), traceparent: None };
    // Returned to `sent` on any way out but the commit.
    let marks = sent.take();
    let result = (|| {
        marks.write(&mut tx)?;
        let out = f(&mut tx)?;
        let events = std::mem::take(&mut tx.events);
        let events = events::write_all(&mut tx, events)?;
        Ok((out, events))
    })();
    let (out, events) = match result {
        Ok(v) => v,
        Err(e) => {
            if let TxConn::Postgres(s) = tx.conn {
                s.rollback();
            }
            return Err(e);
        }
    };
    match tx.conn {
        TxConn::Sqlite(c) => c.commit().map_err(DbError::from)?,
        TxConn::Postgres(s) => s.commit()?,
    }
    marks.committed();
    committed.push(events);
    Ok(out)
}

/// The writer thread: runs jobs in order until closed.
fn serve(mut conn: WriterConn, mut jobs: mpsc::UnboundedReceiver<Command>) {
    while let Some(cmd) = jobs.blocking_recv() {
        match cmd {
            Command::Run(job) => {
                // A panicking job rolls its transaction back (SQLite: the
                // `Transaction` drops; PostgreSQL: the session rolls back
                // before its next `BEGIN`) and fails only its own caller.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut conn))).is_err() {
                    tracing::error!("a database write panicked; it was rolled back");
                }
            }
            Command::Close(done) => {
                match conn {
                    WriterConn::Sqlite(c) => sqlite::close(c),
                    WriterConn::Postgres(s) => s.close(),
                }
                let _ = done.send(());
                return;
            }
        }
    }
}

/// Deletes the oldest rows of `table`, an append-only log ordered by its
/// integer key column `key`, up to the first row for which `keep` (an SQL
/// condition on `$1`, here a time) holds, and at most `limit` keys past the
/// oldest. It visits only the rows it deletes (and the first one it keeps),
/// not the whole table: the prunes of the outbox and the timeline.
pub fn prune_log(tx: &mut Tx<'_>, table: &str, key: &str, keep: &str, at: i64, limit: i64) -> DbResult<u64> {
    tx.execute(
        &format!(
            "DELETE FROM {table} WHERE {key} < coalesce(
                 (SELECT {key} FROM {table} WHERE {keep} ORDER BY {key} LIMIT 1),
                 (SELECT max({key}) + 1 FROM {table}))
               AND {key} < (SELECT min({key}) FROM {table}) + $2"
        ),
        &[&at, &limit],
    )
}

/// This process's id among instances sharing a database (the owner of the
/// outbox rows it commits): random, fresh on every start.
pub fn instance() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().to_string())
}

/// How long a pool waits for a free connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A SQLite database with only the shared tables, for unit tests.
#[cfg(test)]
pub(crate) async fn test_db(dir: &std::path::Path) -> Db {
    let cfg = DbConfig { path: dir.join("test.db"), ..Default::default() };
    Db::open(&cfg, &Migrations { sqlite: Migrator::DEFAULT, postgres: Migrator::DEFAULT }).await.expect("test database")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database made before migrations (its tables created by the
    /// nodes' start-up, no `_sqlx_migrations`) opens with its rows.
    #[tokio::test]
    async fn a_database_from_before_migrations_opens_with_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = rusqlite::Connection::open(dir.path().join("test.db")).unwrap();
            conn.execute_batch(include_str!("../../migrations/sqlite/0001_shared.sql")).unwrap();
            conn.execute(
                "INSERT INTO dead_letters (topic, payload, payload_bytes, reason, at) VALUES ('t', x'00', 1, 'r', 1)",
                [],
            )
            .unwrap();
        }
        let db = test_db(dir.path()).await;
        assert_eq!(db.reader.scalar("SELECT COUNT(*) FROM dead_letters", &[]).await.unwrap(), 1);
        let applied = db.reader.scalar("SELECT COUNT(*) FROM _sqlx_migrations", &[]).await.unwrap();
        assert_eq!(applied, 1, "the shared migration is recorded");
        db.close().await;
        // And again: nothing left to apply.
        let db = test_db(dir.path()).await;
        assert_eq!(db.reader.scalar("SELECT COUNT(*) FROM dead_letters", &[]).await.unwrap(), 1);
        db.close().await;
    }
}
