//! Inventory's tables and every SQL statement that touches them.

use std::collections::hash_map::{Entry, HashMap};
use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use sqlx::{Row, SqlitePool};

use shared::db::{now_ms, Db};
use shared::ids::{OrderId, Sku};

use crate::domain::{Change, Level, PriceHistory, Reservation};

pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS products (
    sku         TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
    currency    TEXT NOT NULL,
    available   INTEGER NOT NULL CHECK (available >= 0),
    reserved    INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    initial     INTEGER NOT NULL,
    restocked   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS reservations (
    order_id    TEXT PRIMARY KEY,
    state       TEXT NOT NULL CHECK (state IN ('reserved', 'rejected', 'released')),
    lines       TEXT NOT NULL,
    fingerprint TEXT,
    reason      TEXT,
    decided_at  INTEGER,
    released_at INTEGER
);
CREATE TABLE IF NOT EXISTS price_history (
    sku         TEXT NOT NULL,
    price_cents INTEGER NOT NULL,
    replaced_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS price_history_by_sku ON price_history (sku, replaced_at);
"#;

/// A product as the catalog shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub description: String,
    pub price_cents: i64,
    pub currency: String,
    pub available: i64,
}

/// A catalog entry to load: a product and its starting stock.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SeedProduct {
    pub sku: Sku,
    pub name: String,
    pub description: String,
    pub price_cents: i64,
    pub currency: String,
    pub stock: i64,
}

/// Loads `products` if the catalog is empty (first start only).
pub async fn seed_if_empty(db: &Db, products: &[SeedProduct]) -> rusqlite::Result<usize> {
    let products = products.to_vec();
    db.write(move |tx| {
        let count: i64 = tx.query_row("SELECT COUNT(*) FROM products", [], |r| r.get(0))?;
        if count > 0 {
            return Ok(0);
        }
        for p in &products {
            insert_product(tx, p)?;
        }
        Ok(products.len())
    })
    .await
}

/// A new product row: its starting stock is both `available` and `initial`.
fn insert_product(conn: &Connection, p: &SeedProduct) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO products (sku, name, description, price_cents, currency, available, initial)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![p.sku.as_str(), p.name, p.description, p.price_cents, p.currency, p.stock, p.stock])?;
    Ok(())
}

fn product(r: &sqlx::sqlite::SqliteRow) -> Product {
    Product {
        sku: r.get(0),
        name: r.get(1),
        description: r.get(2),
        price_cents: r.get(3),
        currency: r.get(4),
        available: r.get(5),
    }
}

const PRODUCT_COLUMNS: &str = "sku, name, description, price_cents, currency, available";

/// One page of the catalog, by SKU, optionally filtered by `q` on name and
/// description. Returns the page and whether more follow.
pub async fn list_products(
    pool: &SqlitePool,
    q: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> sqlx::Result<(Vec<Product>, bool)> {
    let pattern = q.map(|q| {
        let escaped = q.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        format!("%{escaped}%")
    });
    let rows = sqlx::query(&format!(
        "SELECT {PRODUCT_COLUMNS} FROM products
         WHERE (?1 IS NULL OR name LIKE ?1 ESCAPE '\\' OR description LIKE ?1 ESCAPE '\\')
           AND (?2 IS NULL OR sku > ?2)
         ORDER BY sku LIMIT ?3"
    ))
    .bind(pattern)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let more = rows.len() as i64 > limit;
    Ok((rows.iter().take(limit as usize).map(product).collect(), more))
}

pub async fn get_product(pool: &SqlitePool, sku: &Sku) -> sqlx::Result<Option<Product>> {
    let row = sqlx::query(&format!("SELECT {PRODUCT_COLUMNS} FROM products WHERE sku = ?"))
        .bind(sku.as_str())
        .fetch_optional(pool)
        .await?;
    Ok(row.as_ref().map(product))
}

pub async fn get_products(pool: &SqlitePool, skus: &[Sku]) -> sqlx::Result<Vec<Product>> {
    let mut out = Vec::with_capacity(skus.len());
    for sku in skus {
        if let Some(p) = get_product(pool, sku).await? {
            out.push(p);
        }
    }
    Ok(out)
}

fn parse_lines(s: &str) -> Vec<(Sku, i64)> {
    // Written only by `Stock::write`; a row we can't read would be a bug,
    // and an empty list is the safe reading (nothing to give back twice).
    serde_json::from_str(s).unwrap_or_default()
}

fn reservation_from(state: &str, lines: &str, fingerprint: Option<String>, reason: Option<String>) -> Reservation {
    let lines = parse_lines(lines);
    match state {
        "reserved" => Reservation::Reserved { lines, fingerprint: fingerprint.unwrap_or_default() },
        "rejected" => {
            Reservation::Rejected { fingerprint: fingerprint.unwrap_or_default(), reason: reason.unwrap_or_default() }
        }
        _ => Reservation::Released { lines, fingerprint },
    }
}

/// The stock and reservations one consumer transaction touches: read
/// once, changed in memory by the handlers, written back once (see
/// `shared::consumer::Handler`). What it didn't read ahead is read on first
/// use.
#[derive(Default)]
pub struct Stock {
    reservations: HashMap<OrderId, Held>,
    /// `None`: no such product.
    levels: HashMap<Sku, Option<Level>>,
    /// Change of `available` per SKU in this batch (`reserved` moves the
    /// other way).
    deltas: BTreeMap<Sku, i64>,
}

struct Held {
    reservation: Option<Reservation>,
    changed: bool,
    decided_at: Option<i64>,
    released_at: Option<i64>,
}

impl Stock {
    /// What inventory holds for `order_id`.
    pub fn reservation(&mut self, conn: &Connection, order_id: OrderId) -> rusqlite::Result<Option<Reservation>> {
        let held = match self.reservations.entry(order_id) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let found = conn
                    .prepare_cached("SELECT state, lines, fingerprint, reason FROM reservations WHERE order_id = ?")?
                    .query_row([order_id.to_string()], |r| {
                        Ok(reservation_from(&r.get::<_, String>(0)?, &r.get::<_, String>(1)?, r.get(2)?, r.get(3)?))
                    })
                    .optional()?;
                e.insert(Held::unchanged(found))
            }
        };
        Ok(held.reservation.clone())
    }

    /// Stock levels of the given SKUs (unknown ones are absent), with this
    /// batch's changes.
    pub fn levels<'a>(
        &mut self,
        conn: &Connection,
        skus: impl Iterator<Item = &'a Sku>,
    ) -> rusqlite::Result<BTreeMap<Sku, Level>> {
        let mut out = BTreeMap::new();
        for sku in skus {
            if !self.levels.contains_key(sku) {
                let level = conn
                    .prepare_cached("SELECT available, reserved FROM products WHERE sku = ?")?
                    .query_row([sku.as_str()], |r| Ok(Level { available: r.get(0)?, reserved: r.get(1)? }))
                    .optional()?;
                self.levels.insert(sku.clone(), level);
            }
            if let Some(Some(level)) = self.levels.get(sku) {
                out.insert(sku.clone(), *level);
            }
        }
        Ok(out)
    }

    fn move_stock(&mut self, lines: &[(Sku, i64)], to_available: i64) {
        for (sku, qty) in lines {
            let delta = to_available * qty;
            if let Some(Some(level)) = self.levels.get_mut(sku) {
                level.available += delta;
                level.reserved -= delta;
            }
            *self.deltas.entry(sku.clone()).or_default() += delta;
        }
    }

    /// Applies `change` for `order_id`: stock and the reservation.
    pub fn apply(&mut self, order_id: OrderId, change: Change) {
        let now = now_ms();
        let held = self.reservations.entry(order_id).or_insert(Held::unchanged(None));
        held.changed = true;
        // What moves between `available` and `reserved`, and which way.
        let (lines, to_available) = match change {
            Change::Reserve { lines, fingerprint } => {
                held.decided_at = Some(now);
                held.reservation = Some(Reservation::Reserved { lines: lines.clone(), fingerprint });
                (lines, -1)
            }
            Change::Reject { fingerprint, reason } => {
                held.decided_at = Some(now);
                held.reservation = Some(Reservation::Rejected { fingerprint, reason });
                (Vec::new(), 0)
            }
            Change::Release { lines } => {
                let fingerprint = match &held.reservation {
                    Some(Reservation::Reserved { fingerprint, .. }) => Some(fingerprint.clone()),
                    _ => None,
                };
                held.released_at = Some(now);
                held.reservation = Some(Reservation::Released { lines: lines.clone(), fingerprint });
                (lines, 1)
            }
            Change::Tombstone => {
                held.released_at = Some(now);
                held.reservation = Some(Reservation::Released { lines: Vec::new(), fingerprint: None });
                (Vec::new(), 1)
            }
        };
        self.move_stock(&lines, to_available);
    }

    /// Writes every change: one update per product whose stock moved, one
    /// upsert per changed reservation.
    pub fn write(self, conn: &Connection) -> rusqlite::Result<()> {
        // The CHECK (available >= 0) is the last line of defence.
        let mut stock = conn.prepare_cached(
            "UPDATE products SET available = available + ?1, reserved = reserved - ?1 WHERE sku = ?2",
        )?;
        for (sku, delta) in self.deltas.iter().filter(|(_, d)| **d != 0) {
            stock.execute(params![delta, sku.as_str()])?;
        }
        let mut upsert = conn.prepare_cached(
            "INSERT INTO reservations (order_id, state, lines, fingerprint, reason, decided_at, released_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (order_id) DO UPDATE SET
                 state = excluded.state, lines = excluded.lines,
                 released_at = COALESCE(excluded.released_at, released_at)",
        )?;
        for (id, h) in self.reservations.into_iter().filter(|(_, h)| h.changed) {
            let Some(reservation) = h.reservation else { continue };
            let (state, lines, fingerprint, reason) = match reservation {
                Reservation::Reserved { lines, fingerprint } => ("reserved", lines, Some(fingerprint), None),
                Reservation::Rejected { fingerprint, reason } => {
                    ("rejected", Vec::new(), Some(fingerprint), Some(reason))
                }
                Reservation::Released { lines, fingerprint } => ("released", lines, fingerprint, None),
            };
            let lines = serde_json::to_string(&lines).unwrap_or_else(|_| "[]".to_owned());
            upsert.execute(params![id.to_string(), state, lines, fingerprint, reason, h.decided_at, h.released_at])?;
        }
        Ok(())
    }
}

impl Held {
    fn unchanged(reservation: Option<Reservation>) -> Held {
        Held { reservation, changed: false, decided_at: None, released_at: None }
    }
}

/// A reservation as operators and the audit see it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReservationView {
    pub order_id: String,
    pub state: String,
    pub lines: Vec<(Sku, i64)>,
    pub reason: Option<String>,
    pub decided_at_ms: Option<i64>,
    pub released_at_ms: Option<i64>,
}

/// Every reservation (paged by order id), for the audit.
pub async fn list_reservations(
    pool: &SqlitePool,
    after: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<ReservationView>> {
    let rows = sqlx::query(
        "SELECT order_id, state, lines, reason, decided_at, released_at FROM reservations
         WHERE (?1 IS NULL OR order_id > ?1) ORDER BY order_id LIMIT ?2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(reservation_row).collect())
}

fn reservation_row(r: sqlx::sqlite::SqliteRow) -> ReservationView {
    ReservationView {
        order_id: r.get(0),
        state: r.get(1),
        lines: parse_lines(r.get(2)),
        reason: r.get(3),
        decided_at_ms: r.get(4),
        released_at_ms: r.get(5),
    }
}

pub async fn reservation_view(pool: &SqlitePool, order_id: OrderId) -> sqlx::Result<Option<ReservationView>> {
    let row = sqlx::query(
        "SELECT order_id, state, lines, reason, decided_at, released_at FROM reservations WHERE order_id = ?",
    )
    .bind(order_id.to_string())
    .fetch_optional(pool)
    .await?;
    Ok(row.map(reservation_row))
}

/// Stock bookkeeping of one product, for the audit.
#[derive(Debug, Serialize, Deserialize)]
pub struct StockView {
    pub sku: String,
    pub available: i64,
    pub reserved: i64,
    pub initial: i64,
    pub restocked: i64,
}

pub async fn stock(pool: &SqlitePool) -> sqlx::Result<Vec<StockView>> {
    let rows = sqlx::query("SELECT sku, available, reserved, initial, restocked FROM products ORDER BY sku")
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| StockView {
            sku: r.get(0),
            available: r.get(1),
            reserved: r.get(2),
            initial: r.get(3),
            restocked: r.get(4),
        })
        .collect())
}

/// Why an admin change was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("a different product with SKU {0} already exists")]
    Exists(String),
    #[error("no product with SKU {0}")]
    Unknown(String),
    #[error(transparent)]
    Db(#[from] rusqlite::Error),
    #[error(transparent)]
    Read(#[from] sqlx::Error),
}

/// Adds a product with its initial stock; returns it as the catalog shows
/// it, and whether this call created it. A product already added with the
/// same name, description, price, currency and initial stock is the same
/// request again (a retry whose answer was lost), not a conflict.
pub async fn add_product(db: &Db, p: &SeedProduct) -> Result<(Product, bool), AdminError> {
    let row = p.clone();
    let created = db
        .write(move |tx| -> Result<bool, AdminError> {
            let existing = tx
                .query_row(
                    "SELECT name, description, price_cents, currency, initial FROM products WHERE sku = ?",
                    [row.sku.as_str()],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, i64>(4)?,
                        ))
                    },
                )
                .optional()?;
            match existing {
                None => {
                    insert_product(tx, &row)?;
                    Ok(true)
                }
                Some(e) if e == (row.name, row.description, row.price_cents, row.currency, row.stock) => Ok(false),
                Some(_) => Err(AdminError::Exists(row.sku.to_string())),
            }
        })
        .await?;
    let product = get_product(&db.reader, &p.sku).await?.ok_or_else(|| AdminError::Unknown(p.sku.to_string()))?;
    Ok((product, created))
}

/// Sets a product's price and/or its available stock. A stock change is
/// booked as a restock (`restocked += new - old`, possibly negative for a
/// write-off), so `initial + restocked == available + reserved` holds.
pub async fn update_product(
    db: &Db,
    sku: &Sku,
    price_cents: Option<i64>,
    available: Option<i64>,
) -> Result<Product, AdminError> {
    let key = sku.clone();
    db.write(move |tx| -> Result<(), AdminError> {
        let old: i64 = tx
            .query_row("SELECT available FROM products WHERE sku = ?", [key.as_str()], |r| r.get(0))
            .optional()?
            .ok_or_else(|| AdminError::Unknown(key.to_string()))?;
        if let Some(price) = price_cents {
            record_replaced_price(tx, &key, price, now_ms())?;
            tx.execute("UPDATE products SET price_cents = ? WHERE sku = ?", params![price, key.as_str()])?;
        }
        if let Some(new) = available {
            tx.execute(
                "UPDATE products SET available = ?1, restocked = restocked + (?1 - ?2) WHERE sku = ?3",
                params![new, old, key.as_str()],
            )?;
        }
        Ok(())
    })
    .await?;
    get_product(&db.reader, sku).await?.ok_or_else(|| AdminError::Unknown(sku.to_string()))
}

/// Stock gauges for `/metrics`.
pub async fn update_gauges(db: shared::db::Db) {
    if let Ok(row) = sqlx::query("SELECT COALESCE(SUM(available), 0), COALESCE(SUM(reserved), 0) FROM products")
        .fetch_one(&db.reader)
        .await
    {
        metrics::gauge!("stock_available_units").set(row.get::<i64, _>(0) as f64);
        metrics::gauge!("stock_reserved_units").set(row.get::<i64, _>(1) as f64);
    }
    if let Ok(n) = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM reservations WHERE state = 'reserved'")
        .fetch_one(&db.reader)
        .await
    {
        metrics::gauge!("reservations_live").set(n as f64);
    }
}

// price history: what inventory needs to be the price authority (an order
// may quote a price a product had within the grace window).

/// Before a price change: keeps the price `sku` had until `now_ms`, if
/// `new_price` replaces it.
fn record_replaced_price(conn: &Connection, sku: &Sku, new_price: i64, now_ms: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO price_history (sku, price_cents, replaced_at)
         SELECT sku, price_cents, ?1 FROM products WHERE sku = ?2 AND price_cents != ?3",
    )?
    .execute(params![now_ms, sku.as_str(), new_price])?;
    Ok(())
}

/// The current price and currency of each of `skus` that exists, with the
/// prices replaced at or after `since_ms`.
pub fn price_histories<'a>(
    conn: &Connection,
    skus: impl Iterator<Item = &'a Sku>,
    since_ms: i64,
) -> rusqlite::Result<BTreeMap<Sku, PriceHistory>> {
    let mut current = conn.prepare_cached("SELECT price_cents, currency FROM products WHERE sku = ?")?;
    let mut replaced =
        conn.prepare_cached("SELECT price_cents, replaced_at FROM price_history WHERE sku = ? AND replaced_at >= ?")?;
    let mut out = BTreeMap::new();
    for sku in skus {
        if out.contains_key(sku) {
            continue;
        }
        let Some((current_cents, currency)) =
            current.query_row([sku.as_str()], |r| Ok((r.get(0)?, r.get(1)?))).optional()?
        else {
            continue;
        };
        let replaced = replaced
            .query_map(params![sku.as_str(), since_ms], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<(i64, i64)>>>()?;
        out.insert(sku.clone(), PriceHistory { currency, current_cents, replaced });
    }
    Ok(out)
}
