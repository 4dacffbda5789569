//! The order service's tables and every SQL statement that touches them.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::{Row, SqliteConnection, SqlitePool};

use shared::db::{now_ms, values_sql, INSERT_CHUNK};
use shared::ids::OrderId;
use shared::message::{OrderStatus, SendOrder};

use crate::domain::{needs_follow_up, Order};

pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS orders (
    order_id        TEXT PRIMARY KEY,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'rejected', 'cancelled')),
    version         INTEGER NOT NULL,
    customer_email  TEXT NOT NULL,
    items           TEXT NOT NULL,
    currency        TEXT NOT NULL,
    total_cents     INTEGER NOT NULL,
    fingerprint     TEXT NOT NULL,
    reason          TEXT,
    release_pending INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    -- When to chase inventory again (stock decision or release); NULL when
    -- nothing is outstanding.
    follow_up_at    INTEGER,
    follow_ups      INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID; -- one b-tree keyed by order_id, not a rowid table plus an index on it
CREATE INDEX IF NOT EXISTS orders_follow_up ON orders(follow_up_at) WHERE follow_up_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS orders_status ON orders(status);
CREATE TABLE IF NOT EXISTS cancel_tombstones (
    order_id TEXT PRIMARY KEY,
    at       INTEGER NOT NULL
) WITHOUT ROWID;
"#;

const COLUMNS: &str = "order_id, status, version, customer_email, items, currency, total_cents, fingerprint, reason, release_pending, created_at, updated_at";

fn order(r: &sqlx::sqlite::SqliteRow) -> Order {
    let id: String = r.get(0);
    let status: String = r.get(1);
    let items: String = r.get(4);
    Order {
        // Written only by `save`, from parsed values.
        order_id: OrderId::parse(&id).unwrap_or(OrderId(uuid::Uuid::nil())),
        status: OrderStatus::parse(&status).unwrap_or(OrderStatus::Pending),
        version: r.get(2),
        customer_email: r.get(3),
        items: serde_json::from_str(&items).unwrap_or_default(),
        currency: r.get(5),
        total_cents: r.get(6),
        fingerprint: r.get(7),
        reason: r.get(8),
        release_pending: r.get::<i64, _>(9) != 0,
        created_at_ms: r.get(10),
        updated_at_ms: r.get(11),
    }
}

pub async fn get(conn: &mut SqliteConnection, id: OrderId) -> sqlx::Result<Option<Order>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM orders WHERE order_id = ?"))
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    Ok(row.as_ref().map(order))
}

/// The orders one consumer transaction touches: read once, changed in
/// memory by the handlers, written back once (see
/// `shared::consumer::Handler`). Orders it didn't read ahead are read on
/// first use.
#[derive(Default)]
pub struct Orders {
    slots: HashMap<OrderId, Slot>,
}

#[derive(Default)]
struct Slot {
    order: Option<Order>,
    /// A cancel came before the order (a row in `cancel_tombstones`).
    tombstoned: bool,
    /// Changed in this batch: its `follow_up_at` to write.
    save: Option<Option<i64>>,
    new_tombstone: bool,
}

impl Orders {
    /// Reads the given orders and their tombstones, one statement per chunk.
    pub async fn load(conn: &mut SqliteConnection, ids: impl IntoIterator<Item = OrderId>) -> sqlx::Result<Orders> {
        let mut ids: Vec<String> = ids.into_iter().map(|id| id.to_string()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut orders = Orders::default();
        let cols = COLUMNS.split(", ").map(|c| format!("o.{c}")).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "SELECT {cols}, EXISTS (SELECT 1 FROM cancel_tombstones t WHERE t.order_id = k.value), k.value
             FROM json_each(?1) k LEFT JOIN orders o ON o.order_id = k.value"
        );
        for chunk in ids.chunks(500) {
            let list = serde_json::to_string(chunk).unwrap_or_else(|_| "[]".to_owned());
            for row in sqlx::query(&sql).bind(list).fetch_all(&mut *conn).await? {
                // Written by us from a parsed OrderId just above.
                let Ok(id) = OrderId::parse(row.get::<&str, _>(13)) else { continue };
                let order = row.get::<Option<String>, _>(0).is_some().then(|| order(&row));
                let tombstoned = row.get::<i64, _>(12) != 0;
                orders.slots.insert(id, Slot { order, tombstoned, ..Slot::default() });
            }
        }
        Ok(orders)
    }

    async fn slot(&mut self, conn: &mut SqliteConnection, id: OrderId) -> sqlx::Result<&mut Slot> {
        if !self.slots.contains_key(&id) {
            let loaded = Orders::load(conn, [id]).await?;
            self.slots.extend(loaded.slots);
        }
        Ok(self.slots.get_mut(&id).expect("loaded just above"))
    }

    /// The order, and whether a cancel for it came first.
    pub async fn get(&mut self, conn: &mut SqliteConnection, id: OrderId) -> sqlx::Result<(Option<Order>, bool)> {
        let slot = self.slot(conn, id).await?;
        Ok((slot.order.clone(), slot.tombstoned))
    }

    /// Inserts or updates `order`, scheduling a follow-up `retry_ms` from
    /// now when it still waits on inventory.
    pub fn save(&mut self, order: Order, retry_ms: i64) {
        let follow_up_at = needs_follow_up(&order).then(|| now_ms() + retry_ms);
        let slot = self.slots.entry(order.order_id).or_default();
        slot.order = Some(order);
        slot.save = Some(follow_up_at);
    }

    /// Remembers that the order was cancelled before it arrived.
    pub fn tombstone(&mut self, id: OrderId) {
        let slot = self.slots.entry(id).or_default();
        if !slot.tombstoned {
            slot.tombstoned = true;
            slot.new_tombstone = true;
        }
    }

    /// Writes every change, one statement per chunk of orders.
    pub async fn write(self, conn: &mut SqliteConnection) -> sqlx::Result<()> {
        let mut saves = Vec::new();
        let mut tombstones = Vec::new();
        for (id, slot) in self.slots {
            if slot.new_tombstone {
                tombstones.push(id);
            }
            if let (Some(follow_up_at), Some(order)) = (slot.save, slot.order) {
                saves.push((order, follow_up_at));
            }
        }
        for chunk in saves.chunks(INSERT_CHUNK) {
            let sql = values_sql(
                "INSERT INTO orders (order_id, status, version, customer_email, items, currency, total_cents,
                                     fingerprint, reason, release_pending, created_at, updated_at, follow_up_at)",
                13,
                chunk.len(),
                "ON CONFLICT (order_id) DO UPDATE SET
                     status = excluded.status, version = excluded.version, reason = excluded.reason,
                     release_pending = excluded.release_pending, updated_at = excluded.updated_at,
                     follow_up_at = excluded.follow_up_at,
                     follow_ups = CASE WHEN excluded.follow_up_at IS NULL THEN follow_ups ELSE 0 END",
            );
            let mut q = sqlx::query(&sql);
            for (o, follow_up_at) in chunk {
                q = q
                    .bind(o.order_id.to_string())
                    .bind(o.status.as_str())
                    .bind(o.version)
                    .bind(&o.customer_email)
                    .bind(serde_json::to_string(&o.items).unwrap_or_default())
                    .bind(&o.currency)
                    .bind(o.total_cents)
                    .bind(&o.fingerprint)
                    .bind(&o.reason)
                    .bind(o.release_pending as i64)
                    .bind(o.created_at_ms)
                    .bind(o.updated_at_ms)
                    .bind(*follow_up_at);
            }
            q.execute(&mut *conn).await?;
        }
        for id in tombstones {
            tombstone(conn, id).await?;
        }
        Ok(())
    }
}

pub async fn read(pool: &SqlitePool, id: OrderId) -> sqlx::Result<Option<Order>> {
    let mut conn = pool.acquire().await?;
    get(&mut conn, id).await
}

pub async fn tombstone(conn: &mut SqliteConnection, id: OrderId) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO cancel_tombstones (order_id, at) VALUES (?, ?) ON CONFLICT DO NOTHING")
        .bind(id.to_string())
        .bind(now_ms())
        .execute(conn)
        .await?;
    Ok(())
}

/// Orders whose follow-up is due, with how many follow-ups they had.
pub async fn due_follow_ups(conn: &mut SqliteConnection, limit: i64) -> sqlx::Result<Vec<(Order, i64)>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS}, follow_ups FROM orders WHERE follow_up_at <= ? ORDER BY follow_up_at LIMIT ?"
    ))
    .bind(now_ms())
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows.iter().map(|r| (order(r), r.get(12))).collect())
}

pub async fn reschedule(conn: &mut SqliteConnection, id: OrderId, at_ms: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE orders SET follow_up_at = ?, follow_ups = follow_ups + 1 WHERE order_id = ?")
        .bind(at_ms)
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// The `orders/send` body that recreates `o`, for re-requests.
pub fn send_body(o: &Order) -> Option<SendOrder> {
    Some(SendOrder {
        customer_email: shared::ids::Email::parse(&o.customer_email).ok()?,
        items: o.items.clone(),
        currency: o.currency.clone(),
        fingerprint: o.fingerprint.clone(),
    })
}

/// Orders by status, for operators and the audit.
#[derive(Debug, Serialize, Default)]
pub struct Counts {
    pub pending: i64,
    pub confirmed: i64,
    pub rejected: i64,
    pub cancelled: i64,
    pub release_pending: i64,
}

pub async fn counts(pool: &SqlitePool) -> sqlx::Result<Counts> {
    let rows = sqlx::query("SELECT status, COUNT(*) FROM orders GROUP BY status").fetch_all(pool).await?;
    let mut c = Counts::default();
    for r in rows {
        let n: i64 = r.get(1);
        match r.get::<String, _>(0).as_str() {
            "pending" => c.pending = n,
            "confirmed" => c.confirmed = n,
            "rejected" => c.rejected = n,
            _ => c.cancelled = n,
        }
    }
    c.release_pending =
        sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE release_pending = 1").fetch_one(pool).await?;
    Ok(c)
}

/// Every order (paged by id), for the audit.
pub async fn list(pool: &SqlitePool, after: Option<&str>, limit: i64) -> sqlx::Result<Vec<Order>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM orders WHERE (?1 IS NULL OR order_id > ?1) ORDER BY order_id LIMIT ?2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(order).collect())
}

/// Order gauges for `/metrics`.
pub async fn update_gauges(db: shared::db::Db) {
    if let Ok(c) = counts(&db.reader).await {
        for (status, n) in
            [("pending", c.pending), ("confirmed", c.confirmed), ("rejected", c.rejected), ("cancelled", c.cancelled)]
        {
            metrics::gauge!("orders", "status" => status).set(n as f64);
        }
        metrics::gauge!("orders_release_pending").set(c.release_pending as f64);
    }
}

/// The most recently changed orders, newest first.
pub async fn recent(pool: &SqlitePool, limit: i64) -> sqlx::Result<Vec<Order>> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM orders ORDER BY updated_at DESC LIMIT ?"))
        .bind(limit)
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(order).collect())
}
