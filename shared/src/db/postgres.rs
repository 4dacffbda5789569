//! The PostgreSQL backend: one writer connection on the writer thread
//! (each statement awaited there with `Handle::block_on`, so the handlers'
//! synchronous unit of work is the same on both backends) and an async
//! pool for reads.
//!
//! Transactions run at READ COMMITTED, PostgreSQL's default: the inbox's
//! `ON CONFLICT DO NOTHING` makes a concurrent duplicate wait for the first
//! commit and then insert nothing, and stock rows are locked `FOR UPDATE`
//! in SKU order. A serialization failure or deadlock fails the batch, which
//! the consumer retries whole before acking anything.

use std::str::FromStr;

use anyhow::Context;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::runtime::Handle;

use super::{bind_all, DbError, DbResult, Reader, WriterConn, ACQUIRE_TIMEOUT, P};
use crate::config::DbConfig;

/// Connections in each node's read pool.
const READ_POOL: u32 = 4;

fn options(cfg: &DbConfig) -> anyhow::Result<PgConnectOptions> {
    let url = cfg.url.as_deref().unwrap_or_default();
    // The password comes from `db.password` (environment) or PGPASSWORD;
    // one in the URL works too, but config files keep it out.
    let mut options = PgConnectOptions::from_str(url).context("db.url is not a valid postgres:// URL")?;
    if let Some(password) = &cfg.password {
        options = options.password(password.expose());
    }
    // Every connection works in the service's schema.
    let options = options.options([("search_path", cfg.schema.as_str())]);
    // Statement logging at debug, not info: the hot path runs thousands.
    Ok(options.log_statements(tracing::log::LevelFilter::Debug))
}

/// Connects, applies the migrations (sqlx's migrator holds an advisory lock
/// while it does, so instances starting together take turns), and opens the
/// writer session and the read pool.
pub(super) async fn open(cfg: &DbConfig, migrator: &Migrator) -> anyhow::Result<(Reader, WriterConn, Target)> {
    let options = options(cfg)?;
    let what =
        || format!("connecting to PostgreSQL at {}", crate::config::redact_url(cfg.url.as_deref().unwrap_or_default()));
    // The schema first (a plain name, checked by `DbConfig::validate`).
    let mut setup = PgConnection::connect_with(&options).await.with_context(what)?;
    let created = sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {}", cfg.schema)).execute(&mut setup).await;
    match created {
        // Another instance created it at the same moment.
        Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("23505" | "42P06")) => {}
        other => {
            other.with_context(|| format!("creating schema {}", cfg.schema))?;
        }
    }
    setup.close().await?;
    let reader = PgPoolOptions::new()
        .max_connections(READ_POOL)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options.clone())
        .await
        .with_context(what)?;
    migrator.run(&reader).await.context("migrating the PostgreSQL database")?;
    // The writer plans each statement for its parameters: a plan cached
    // while a table was nearly empty (a sequential scan) would otherwise
    // stay in use for a batch's `= ANY($1)` reads as the table grows.
    //
    // A transaction left open (the process was stopped mid-batch) is ended
    // by the server, so the row locks it holds don't hold up the instance
    // that takes its partitions over (see `crate::ownership`).
    let target = Target { options: options.clone(), schema: cfg.schema.clone() };
    let options = options
        .options([("plan_cache_mode", "force_custom_plan"), ("idle_in_transaction_session_timeout", IDLE_TIMEOUT)]);
    let conn = PgConnection::connect_with(&options).await.with_context(what)?;
    let session = Session { rt: Handle::current(), options, conn: Some(conn), changes: 0 };
    Ok((Reader::Postgres(reader), WriterConn::Postgres(Box::new(session)), target))
}

/// How long the server lets an ownership session sit idle, or a write
/// transaction sit open with nothing to do, before it ends the session:
/// the time a stopped (not killed) process keeps its partitions.
pub(crate) const IDLE_TIMEOUT: &str = "5s";

/// Where a node's extra sessions (partition ownership) connect: the
/// node's own options and schema.
#[derive(Debug)]
pub(crate) struct Target {
    pub options: PgConnectOptions,
    pub schema: String,
}

impl Target {
    /// A session that the server ends after [`IDLE_TIMEOUT`] without a
    /// statement: whoever holds it must keep talking.
    pub async fn connect_watched(&self) -> sqlx::Result<PgConnection> {
        PgConnection::connect_with(&self.options.clone().options([("idle_session_timeout", IDLE_TIMEOUT)])).await
    }
}

/// The writer's connection, reconnected before the next transaction when a
/// statement found it broken.
pub(super) struct Session {
    rt: Handle,
    options: PgConnectOptions,
    conn: Option<PgConnection>,
    /// Rows changed in the open transaction.
    pub(super) changes: u64,
}

impl Session {
    fn conn(&mut self) -> DbResult<&mut PgConnection> {
        if self.conn.is_none() {
            let conn = self.rt.block_on(PgConnection::connect_with(&self.options))?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// A failed statement may have left the connection broken: drop it so
    /// the next transaction starts on a fresh one.
    fn check<T>(&mut self, r: Result<T, sqlx::Error>) -> DbResult<T> {
        if let Err(sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_)) = &r {
            self.conn = None;
        }
        Ok(r?)
    }

    pub(super) fn begin(&mut self) -> DbResult<&mut Session> {
        self.changes = 0;
        let rt = self.rt.clone();
        let conn = self.conn()?;
        let r = rt.block_on(sqlx::query("BEGIN").execute(&mut *conn)).map(|_| ());
        self.check(r)?;
        Ok(self)
    }

    pub(super) fn execute(&mut self, sql: &str, params: &[P<'_>]) -> DbResult<u64> {
        let rt = self.rt.clone();
        let conn = self.conn()?;
        let r = rt.block_on(bind_all!(sqlx::query(sql), params).execute(&mut *conn));
        let n = self.check(r)?.rows_affected();
        self.changes += n;
        Ok(n)
    }

    pub(super) fn query(&mut self, sql: &str, params: &[P<'_>]) -> DbResult<Vec<PgRow>> {
        let rt = self.rt.clone();
        let conn = self.conn()?;
        let r = rt.block_on(bind_all!(sqlx::query(sql), params).fetch_all(&mut *conn));
        self.check(r)
    }

    pub(super) fn commit(&mut self) -> DbResult<()> {
        let rt = self.rt.clone();
        let conn = self.conn.as_mut().ok_or(DbError::Misuse("no open transaction to commit".into()))?;
        let r = rt.block_on(sqlx::query("COMMIT").execute(&mut *conn)).map(|_| ());
        self.check(r)
    }

    pub(super) fn rollback(&mut self) {
        let rt = self.rt.clone();
        if let Some(conn) = self.conn.as_mut() {
            if rt.block_on(sqlx::query("ROLLBACK").execute(&mut *conn)).is_err() {
                self.conn = None;
            }
        }
    }

    pub(super) fn close(mut self: Box<Self>) {
        if let Some(conn) = self.conn.take() {
            let _ = self.rt.block_on(conn.close());
        }
    }
}
