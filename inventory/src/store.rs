//! Inventory's tables and every SQL statement that touches them.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use sqlx::{Row, SqliteConnection, SqlitePool};

use shared::db::{now_ms, values_sql, INSERT_CHUNK};
use shared::ids::{OrderId, Sku};

use crate::domain::{Change, Level, Reservation};

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
pub async fn seed_if_empty(pool: &SqlitePool, products: &[SeedProduct]) -> sqlx::Result<usize> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM products").fetch_one(&mut *tx).await?;
    if count > 0 {
        return Ok(0);
    }
    for p in products {
        insert_product(&mut tx, p).await?;
    }
    tx.commit().await?;
    Ok(products.len())
}

/// A new product row: its starting stock is both `available` and `initial`.
async fn insert_product(conn: &mut SqliteConnection, p: &SeedProduct) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO products (sku, name, description, price_cents, currency, available, initial)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(p.sku.as_str())
    .bind(&p.name)
    .bind(&p.description)
    .bind(p.price_cents)
    .bind(&p.currency)
    .bind(p.stock)
    .bind(p.stock)
    .execute(conn)
    .await?;
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
    /// Reads the reservations of `orders` and the levels of `skus`, one
    /// statement each per chunk.
    pub async fn load(conn: &mut SqliteConnection, orders: Vec<OrderId>, skus: Vec<Sku>) -> sqlx::Result<Stock> {
        let mut stock = Stock::default();
        stock.read(conn, orders, skus).await?;
        Ok(stock)
    }

    async fn read(&mut self, conn: &mut SqliteConnection, orders: Vec<OrderId>, skus: Vec<Sku>) -> sqlx::Result<()> {
        for chunk in orders.chunks(500) {
            let ids: Vec<String> = chunk.iter().map(|id| id.to_string()).collect();
            let rows = sqlx::query(
                "SELECT order_id, state, lines, fingerprint, reason FROM reservations
                 WHERE order_id IN (SELECT value FROM json_each(?1))",
            )
            .bind(serde_json::to_string(&ids).unwrap_or_else(|_| "[]".to_owned()))
            .fetch_all(&mut *conn)
            .await?;
            for id in chunk {
                self.reservations.entry(*id).or_insert(Held::unchanged(None));
            }
            for r in rows {
                let Ok(id) = OrderId::parse(r.get::<&str, _>(0)) else { continue };
                let reservation = reservation_from(r.get(1), r.get(2), r.get(3), r.get(4));
                self.reservations.insert(id, Held::unchanged(Some(reservation)));
            }
        }
        for chunk in skus.chunks(500) {
            let list: Vec<&str> = chunk.iter().map(Sku::as_str).collect();
            let rows = sqlx::query(
                "SELECT sku, available, reserved FROM products WHERE sku IN (SELECT value FROM json_each(?1))",
            )
            .bind(serde_json::to_string(&list).unwrap_or_else(|_| "[]".to_owned()))
            .fetch_all(&mut *conn)
            .await?;
            for sku in chunk {
                self.levels.entry(sku.clone()).or_insert(None);
            }
            for r in rows {
                let Ok(sku) = Sku::parse(r.get::<&str, _>(0)) else { continue };
                self.levels.insert(sku, Some(Level { available: r.get(1), reserved: r.get(2) }));
            }
        }
        Ok(())
    }

    /// What inventory holds for `order_id`.
    pub async fn reservation(
        &mut self,
        conn: &mut SqliteConnection,
        order_id: OrderId,
    ) -> sqlx::Result<Option<Reservation>> {
        if !self.reservations.contains_key(&order_id) {
            self.read(conn, vec![order_id], Vec::new()).await?;
        }
        Ok(self.reservations.get(&order_id).and_then(|h| h.reservation.clone()))
    }

    /// Stock levels of the given SKUs (unknown ones are absent), with this
    /// batch's changes.
    pub async fn levels<'a>(
        &mut self,
        conn: &mut SqliteConnection,
        skus: impl Iterator<Item = &'a Sku>,
    ) -> sqlx::Result<BTreeMap<Sku, Level>> {
        let skus: Vec<Sku> = skus.cloned().collect();
        let missing: Vec<Sku> = skus.iter().filter(|s| !self.levels.contains_key(*s)).cloned().collect();
        if !missing.is_empty() {
            self.read(conn, Vec::new(), missing).await?;
        }
        Ok(skus.into_iter().filter_map(|s| self.levels.get(&s).copied().flatten().map(|l| (s, l))).collect())
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

    /// Writes every change: one statement for the stock, one per chunk of
    /// reservations.
    pub async fn write(self, conn: &mut SqliteConnection) -> sqlx::Result<()> {
        let deltas: Vec<(&str, i64)> =
            self.deltas.iter().filter(|(_, d)| **d != 0).map(|(s, d)| (s.as_str(), *d)).collect();
        if !deltas.is_empty() {
            // The CHECK (available >= 0) is the last line of defence.
            sqlx::query(
                "UPDATE products SET available = products.available + d.delta, reserved = products.reserved - d.delta
                 FROM (SELECT value ->> 0 AS sku, value ->> 1 AS delta FROM json_each(?1)) AS d
                 WHERE products.sku = d.sku",
            )
            .bind(serde_json::to_string(&deltas).unwrap_or_else(|_| "[]".to_owned()))
            .execute(&mut *conn)
            .await?;
        }
        // One row per changed reservation: (order_id, state, lines,
        // fingerprint, reason, decided_at, released_at).
        type Row = (String, &'static str, String, Option<String>, Option<String>, Option<i64>, Option<i64>);
        let rows: Vec<Row> = self
            .reservations
            .into_iter()
            .filter(|(_, h)| h.changed)
            .filter_map(|(id, h)| {
                let (state, lines, fingerprint, reason) = match h.reservation? {
                    Reservation::Reserved { lines, fingerprint } => ("reserved", lines, Some(fingerprint), None),
                    Reservation::Rejected { fingerprint, reason } => {
                        ("rejected", Vec::new(), Some(fingerprint), Some(reason))
                    }
                    Reservation::Released { lines, fingerprint } => ("released", lines, fingerprint, None),
                };
                let lines = serde_json::to_string(&lines).unwrap_or_else(|_| "[]".to_owned());
                Some((id.to_string(), state, lines, fingerprint, reason, h.decided_at, h.released_at))
            })
            .collect();
        for chunk in rows.chunks(INSERT_CHUNK) {
            let sql = values_sql(
                "INSERT INTO reservations (order_id, state, lines, fingerprint, reason, decided_at, released_at)",
                7,
                chunk.len(),
                "ON CONFLICT (order_id) DO UPDATE SET
                     state = excluded.state, lines = excluded.lines,
                     released_at = COALESCE(excluded.released_at, released_at)",
            );
            let mut q = sqlx::query(&sql);
            for (id, state, lines, fingerprint, reason, decided_at, released_at) in chunk {
                q = q
                    .bind(id)
                    .bind(*state)
                    .bind(lines)
                    .bind(fingerprint)
                    .bind(reason)
                    .bind(decided_at)
                    .bind(released_at);
            }
            q.execute(&mut *conn).await?;
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
    #[error("a product with SKU {0} already exists")]
    Exists(String),
    #[error("no product with SKU {0}")]
    Unknown(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Adds a product with its initial stock.
pub async fn add_product(pool: &SqlitePool, p: &SeedProduct) -> Result<(), AdminError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let exists: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM products WHERE sku = ?")
        .bind(p.sku.as_str())
        .fetch_one(&mut *tx)
        .await?;
    if exists > 0 {
        return Err(AdminError::Exists(p.sku.to_string()));
    }
    insert_product(&mut tx, p).await?;
    tx.commit().await?;
    Ok(())
}

/// Sets a product's price and/or its available stock. A stock change is
/// booked as a restock (`restocked += new - old`, possibly negative for a
/// write-off), so `initial + restocked == available + reserved` holds.
pub async fn update_product(
    pool: &SqlitePool,
    sku: &Sku,
    price_cents: Option<i64>,
    available: Option<i64>,
) -> Result<Product, AdminError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let found = sqlx::query("SELECT available FROM products WHERE sku = ?")
        .bind(sku.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| AdminError::Unknown(sku.to_string()))?;
    let old: i64 = found.get(0);
    if let Some(price) = price_cents {
        sqlx::query("UPDATE products SET price_cents = ? WHERE sku = ?")
            .bind(price)
            .bind(sku.as_str())
            .execute(&mut *tx)
            .await?;
    }
    if let Some(new) = available {
        sqlx::query("UPDATE products SET available = ?1, restocked = restocked + (?1 - ?2) WHERE sku = ?3")
            .bind(new)
            .bind(old)
            .bind(sku.as_str())
            .execute(&mut *tx)
            .await?;
    }
    let row = sqlx::query(&format!("SELECT {PRODUCT_COLUMNS} FROM products WHERE sku = ?"))
        .bind(sku.as_str())
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(product(&row))
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
