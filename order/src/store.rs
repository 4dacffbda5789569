//! The order service's tables and every SQL statement that touches them.

use std::collections::hash_map::{Entry, HashMap};

use rusqlite::{params, Connection};
use serde::Serialize;
use sqlx::{Row, SqlitePool};

use shared::db::now_ms;
use shared::ids::OrderId;
use shared::message::{OrderStatus, SendOrder};

use crate::domain::{needs_follow_up, Order, Tombstone};

pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS orders (
    order_id        TEXT NOT NULL UNIQUE,
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
);
-- A rowid table in arrival order plus a unique index on order_id, not a
-- b-tree keyed by order_id: order ids are hashes, so in that b-tree every
-- insert and every status change rewrote a random page. Here an order's
-- row sits near the other recent ones, and only its index entry (small)
-- lands at a random place, once. See `upgrade` for older databases.
CREATE INDEX IF NOT EXISTS orders_follow_up ON orders(follow_up_at) WHERE follow_up_at IS NOT NULL;
-- No index on status: only the operators' counts read it (a scan), and
-- every status change would rewrite an entry at a random place.
DROP INDEX IF EXISTS orders_status;
CREATE TABLE IF NOT EXISTS cancel_tombstones (
    order_id TEXT PRIMARY KEY,
    at       INTEGER NOT NULL
) WITHOUT ROWID;
-- Releases chased for orders known only by their tombstone (inventory
-- reserved for an order that never arrived here): `orders/cancelled` is
-- re-sent at `follow_up_at` until inventory confirms. A row of `orders`
-- chases its own release, so an order never has both. A table of its own
-- rather than columns of `cancel_tombstones`, which older databases have
-- without them. Few rows (and only while inventory is unreachable): no
-- index on `follow_up_at`.
CREATE TABLE IF NOT EXISTS release_chases (
    order_id     TEXT PRIMARY KEY,
    since        INTEGER NOT NULL,
    follow_up_at INTEGER NOT NULL,
    follow_ups   INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
"#;

/// Rebuilds an `orders` table made before it became a rowid table (see
/// `SCHEMA`), in one transaction, on start. Same columns, same order.
pub fn upgrade(conn: &Connection) -> rusqlite::Result<()> {
    let sql: String =
        conn.query_row("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'orders'", [], |r| r.get(0))?;
    if !sql.contains("WITHOUT ROWID") {
        return Ok(());
    }
    tracing::info!("rebuilding the orders table as a rowid table (once)");
    conn.execute_batch(&format!(
        "ALTER TABLE orders RENAME TO orders_without_rowid;
         DROP INDEX IF EXISTS orders_follow_up;
         {SCHEMA}
         INSERT INTO orders SELECT * FROM orders_without_rowid ORDER BY created_at;
         DROP TABLE orders_without_rowid;"
    ))
}

const COLUMNS: &str = "order_id, status, version, customer_email, items, currency, total_cents, fingerprint, reason, release_pending, created_at, updated_at";

/// `COLUMNS` as read by either driver (sqlx on the read pool, rusqlite on
/// the writer).
type OrderRow = (String, String, i64, String, String, String, i64, String, Option<String>, i64, i64, i64);

/// The first 12 columns of a writer row, as `COLUMNS`.
fn order_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OrderRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
    ))
}

fn order(r: OrderRow) -> Order {
    let (
        id,
        status,
        version,
        customer_email,
        items,
        currency,
        total_cents,
        fingerprint,
        reason,
        release,
        created,
        updated,
    ) = r;
    Order {
        // Written only by `save`, from parsed values.
        order_id: OrderId::parse(&id).unwrap_or(OrderId(uuid::Uuid::nil())),
        status: OrderStatus::parse(&status).unwrap_or(OrderStatus::Pending),
        version,
        customer_email,
        items: serde_json::from_str(&items).unwrap_or_default(),
        currency,
        total_cents,
        fingerprint,
        reason,
        release_pending: release != 0,
        created_at_ms: created,
        updated_at_ms: updated,
    }
}

/// The orders one consumer transaction touches: read on first use, changed
/// in memory by the handlers, written back once (see
/// `shared::consumer::Handler`).
#[derive(Default)]
pub struct Orders {
    slots: HashMap<OrderId, Slot>,
}

#[derive(Default)]
struct Slot {
    order: Option<Order>,
    /// The order has a row (read from the table).
    stored: bool,
    /// A cancel came before the order (a row in `cancel_tombstones`).
    tombstoned: bool,
    /// Its release is chased by a row of `release_chases`.
    chased: bool,
    /// Changed in this batch: its `follow_up_at` to write.
    save: Option<Option<i64>>,
    new_tombstone: bool,
    /// Changed in this batch: start a chase (its first follow-up) or end it.
    chase: Option<Option<i64>>,
}

impl Slot {
    fn tombstone(&self) -> Tombstone {
        match (self.tombstoned, self.chased) {
            (_, true) => Tombstone::ReleaseChased,
            (true, false) => Tombstone::Cancelled,
            (false, false) => Tombstone::Absent,
        }
    }
}

impl Orders {
    fn slot(&mut self, conn: &Connection, id: OrderId) -> rusqlite::Result<&mut Slot> {
        match self.slots.entry(id) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => {
                // One row whether or not the order exists: its columns
                // (NULL if it doesn't) and what its tombstone says: 0 none,
                // 1 a tombstone, 2 a tombstone whose release is chased. The
                // chase is looked up only behind a tombstone (every chase
                // has one), so the common case costs no extra lookup.
                let (order, tombstone) = conn
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS},
                                CASE WHEN EXISTS (SELECT 1 FROM cancel_tombstones t WHERE t.order_id = ?1)
                                     THEN 1 + EXISTS (SELECT 1 FROM release_chases c WHERE c.order_id = ?1)
                                     ELSE 0 END
                         FROM (SELECT ?1 AS id) k LEFT JOIN orders o ON o.order_id = k.id"
                    ))?
                    .query_row([id.to_string()], |r| {
                        let found = r.get::<_, Option<String>>(0)?.is_some();
                        let order = if found { Some(order(order_row(r)?)) } else { None };
                        Ok((order, r.get::<_, i64>(12)?))
                    })?;
                Ok(e.insert(Slot {
                    stored: order.is_some(),
                    order,
                    tombstoned: tombstone >= 1,
                    chased: tombstone == 2,
                    ..Slot::default()
                }))
            }
        }
    }

    /// The order, and what its tombstone says.
    pub fn get(&mut self, conn: &Connection, id: OrderId) -> rusqlite::Result<(Option<Order>, Tombstone)> {
        let slot = self.slot(conn, id)?;
        Ok((slot.order.clone(), slot.tombstone()))
    }

    /// Inserts or updates `order`, scheduling a follow-up `retry_ms` from
    /// now when it still waits on inventory. A new order whose release was
    /// chased by its tombstone chases it itself from now on (it is created
    /// with its release pending), so the tombstone's chase ends.
    pub fn save(&mut self, order: Order, retry_ms: i64) {
        let follow_up_at = needs_follow_up(&order).then(|| now_ms() + retry_ms);
        let slot = self.slots.entry(order.order_id).or_default();
        if slot.chased {
            slot.chased = false;
            slot.chase = Some(None);
        }
        slot.order = Some(order);
        slot.save = Some(follow_up_at);
    }

    /// Starts chasing the release of an order known only by its tombstone:
    /// the first follow-up `retry_ms` from now.
    pub fn chase_release(&mut self, id: OrderId, retry_ms: i64) {
        let slot = self.slots.entry(id).or_default();
        slot.chased = true;
        slot.chase = Some(Some(now_ms() + retry_ms));
    }

    /// Inventory confirmed the release a tombstone chased.
    pub fn end_chase(&mut self, id: OrderId) {
        let slot = self.slots.entry(id).or_default();
        slot.chased = false;
        slot.chase = Some(None);
    }

    /// Remembers that the order was cancelled before it arrived.
    pub fn tombstone(&mut self, id: OrderId) {
        let slot = self.slots.entry(id).or_default();
        if !slot.tombstoned {
            slot.tombstoned = true;
            slot.new_tombstone = true;
        }
    }

    /// Writes every change: a new order whole, a stored one's lifecycle
    /// columns only (what an order is for never changes after it is made).
    pub fn write(self, conn: &Connection) -> rusqlite::Result<()> {
        let mut insert = conn.prepare_cached(
            "INSERT INTO orders (order_id, status, version, customer_email, items, currency, total_cents,
                                 fingerprint, reason, release_pending, created_at, updated_at, follow_up_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )?;
        let mut update = conn.prepare_cached(
            "UPDATE orders SET status = ?1, version = ?2, reason = ?3, release_pending = ?4, updated_at = ?5,
                 follow_up_at = ?6, follow_ups = CASE WHEN ?6 IS NULL THEN follow_ups ELSE 0 END
             WHERE order_id = ?7",
        )?;
        for (id, slot) in self.slots {
            if slot.new_tombstone {
                conn.prepare_cached(
                    "INSERT INTO cancel_tombstones (order_id, at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                )?
                .execute(params![id.to_string(), now_ms()])?;
            }
            match slot.chase {
                Some(Some(follow_up_at)) => {
                    conn.prepare_cached(
                        "INSERT INTO release_chases (order_id, since, follow_up_at) VALUES (?, ?, ?)
                         ON CONFLICT DO NOTHING",
                    )?
                    .execute(params![id.to_string(), now_ms(), follow_up_at])?;
                }
                Some(None) => {
                    conn.prepare_cached("DELETE FROM release_chases WHERE order_id = ?")?.execute([id.to_string()])?;
                }
                None => {}
            }
            let (Some(follow_up_at), Some(o)) = (slot.save, slot.order) else { continue };
            if slot.stored {
                update.execute(params![
                    o.status.as_str(),
                    o.version,
                    o.reason,
                    o.release_pending as i64,
                    o.updated_at_ms,
                    follow_up_at,
                    o.order_id.to_string()
                ])?;
            } else {
                insert.execute(params![
                    o.order_id.to_string(),
                    o.status.as_str(),
                    o.version,
                    o.customer_email,
                    serde_json::to_string(&o.items).unwrap_or_default(),
                    o.currency,
                    o.total_cents,
                    o.fingerprint,
                    o.reason,
                    o.release_pending as i64,
                    o.created_at_ms,
                    o.updated_at_ms,
                    follow_up_at
                ])?;
            }
        }
        Ok(())
    }
}

/// One order, on the read pool.
pub async fn read(pool: &SqlitePool, id: OrderId) -> sqlx::Result<Option<Order>> {
    let row = sqlx::query_as::<_, OrderRow>(&format!("SELECT {COLUMNS} FROM orders WHERE order_id = ?"))
        .bind(id.to_string())
        .fetch_optional(pool)
        .await?;
    Ok(row.map(order))
}

/// Orders whose follow-up is due, with how many follow-ups they had.
pub fn due_follow_ups(conn: &Connection, limit: i64) -> rusqlite::Result<Vec<(Order, i64)>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS}, follow_ups FROM orders WHERE follow_up_at <= ? ORDER BY follow_up_at LIMIT ?"
    ))?;
    let rows = stmt.query_map([now_ms(), limit], |r| Ok((order(order_row(r)?), r.get(12)?)))?;
    rows.collect()
}

pub fn reschedule(conn: &Connection, id: OrderId, at_ms: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE orders SET follow_up_at = ?, follow_ups = follow_ups + 1 WHERE order_id = ?")?
        .execute(params![at_ms, id.to_string()])?;
    Ok(())
}

/// Releases chased for tombstones whose follow-up is due, with how many
/// follow-ups they had.
pub fn due_release_chases(conn: &Connection, limit: i64) -> rusqlite::Result<Vec<(OrderId, i64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT order_id, follow_ups FROM release_chases WHERE follow_up_at <= ? ORDER BY follow_up_at LIMIT ?",
    )?;
    let rows = stmt.query_map([now_ms(), limit], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))?;
    let mut due = Vec::new();
    for row in rows {
        let (id, follow_ups) = row?;
        // Written only by `Orders::write`, from parsed ids.
        if let Ok(id) = OrderId::parse(&id) {
            due.push((id, follow_ups));
        }
    }
    Ok(due)
}

pub fn reschedule_chase(conn: &Connection, id: OrderId, at_ms: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE release_chases SET follow_up_at = ?, follow_ups = follow_ups + 1 WHERE order_id = ?")?
        .execute(params![at_ms, id.to_string()])?;
    Ok(())
}

/// A release chased for an order known only by its tombstone, as operators
/// and the audit see it.
#[derive(Debug, Serialize)]
pub struct ReleaseChase {
    pub order_id: String,
    /// When the chase started (the first `orders/cancelled`).
    pub since_ms: i64,
    /// `orders/cancelled` re-sent so far.
    pub follow_ups: i64,
    pub next_follow_up_at_ms: i64,
}

/// Every release chased for a tombstone (paged by order id), for the audit.
pub async fn release_chases(pool: &SqlitePool, after: Option<&str>, limit: i64) -> sqlx::Result<Vec<ReleaseChase>> {
    let rows = sqlx::query_as::<_, (String, i64, i64, i64)>(
        "SELECT order_id, since, follow_ups, follow_up_at FROM release_chases
         WHERE (?1 IS NULL OR order_id > ?1) ORDER BY order_id LIMIT ?2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(order_id, since_ms, follow_ups, next_follow_up_at_ms)| ReleaseChase {
            order_id,
            since_ms,
            follow_ups,
            next_follow_up_at_ms,
        })
        .collect())
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
    let rows = sqlx::query_as::<_, OrderRow>(&format!(
        "SELECT {COLUMNS} FROM orders WHERE (?1 IS NULL OR order_id > ?1) ORDER BY order_id LIMIT ?2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(order).collect())
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
    let rows = sqlx::query_as::<_, OrderRow>(&format!("SELECT {COLUMNS} FROM orders ORDER BY updated_at DESC LIMIT ?"))
        .bind(limit)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(order).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_rebuilds_an_orders_table_without_rowid_keeping_its_rows() {
        let conn = Connection::open_in_memory().unwrap();
        let old =
            SCHEMA.replace("order_id        TEXT NOT NULL UNIQUE,", "order_id        TEXT PRIMARY KEY,").replacen(
                "follow_ups      INTEGER NOT NULL DEFAULT 0\n);",
                "follow_ups      INTEGER NOT NULL DEFAULT 0\n) WITHOUT ROWID;",
                1,
            );
        assert_ne!(old, SCHEMA, "the old layout must differ");
        conn.execute_batch(&old).unwrap();
        for (id, at, follow_up) in [("b", 2, None), ("a", 1, Some(5))] {
            conn.execute(
                "INSERT INTO orders (order_id, status, version, customer_email, items, currency, total_cents,
                                     fingerprint, created_at, updated_at, follow_up_at)
                 VALUES (?, 'pending', 1, 'x@example.com', '[]', 'EUR', 100, 'f', ?, ?, ?)",
                params![id, at, at, follow_up],
            )
            .unwrap();
        }
        upgrade(&conn).unwrap();
        let sql: String =
            conn.query_row("SELECT sql FROM sqlite_master WHERE name = 'orders'", [], |r| r.get(0)).unwrap();
        assert!(!sql.contains("WITHOUT ROWID"));
        let rows: Vec<(i64, String)> = conn
            .prepare("SELECT rowid, order_id FROM orders ORDER BY rowid")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, [(1, "a".to_string()), (2, "b".to_string())], "rows kept, in arrival order");
        let due: i64 = conn
            .query_row("SELECT COUNT(*) FROM orders INDEXED BY orders_follow_up WHERE follow_up_at <= 5", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(due, 1, "the follow-up index is back");
        let dup = conn.execute("INSERT INTO orders SELECT * FROM orders WHERE order_id = 'a'", []);
        assert!(dup.is_err(), "order ids stay unique");
        upgrade(&conn).unwrap();
    }

    fn chases(conn: &Connection) -> Vec<(String, i64)> {
        conn.prepare("SELECT order_id, follow_ups FROM release_chases ORDER BY order_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn a_tombstone_chases_its_release_until_confirmed_or_its_order_takes_over() {
        let conn = Connection::open_in_memory().unwrap();
        // A database from before release chases: the schema adds the table
        // and its tombstones keep working.
        let chase_table = SCHEMA.find("-- Releases chased").unwrap();
        conn.execute_batch(&SCHEMA[..chase_table]).unwrap();
        conn.execute(
            "INSERT INTO cancel_tombstones (order_id, at) VALUES (?, 1)",
            [OrderId(uuid::Uuid::nil()).to_string()],
        )
        .unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let (old, confirmed, taken_over) =
            (OrderId(uuid::Uuid::nil()), OrderId(uuid::Uuid::from_u128(1)), OrderId(uuid::Uuid::from_u128(2)));
        let mut orders = Orders::default();
        assert_eq!(orders.get(&conn, old).unwrap().1, Tombstone::Cancelled);
        for id in [confirmed, taken_over] {
            assert_eq!(orders.get(&conn, id).unwrap().1, Tombstone::Absent);
            orders.tombstone(id);
            orders.chase_release(id, -1);
        }
        orders.write(&conn).unwrap();
        assert_eq!(chases(&conn), [(confirmed.to_string(), 0), (taken_over.to_string(), 0)]);

        let due = due_release_chases(&conn, 10).unwrap();
        assert_eq!(due.len(), 2, "both due: {due:?}");
        reschedule_chase(&conn, confirmed, now_ms() + 60_000).unwrap();
        assert_eq!(due_release_chases(&conn, 10).unwrap(), [(taken_over, 0)]);

        let mut orders = Orders::default();
        assert_eq!(orders.get(&conn, confirmed).unwrap().1, Tombstone::ReleaseChased);
        orders.end_chase(confirmed);
        assert_eq!(orders.get(&conn, taken_over).unwrap().1, Tombstone::ReleaseChased);
        let s = SendOrder {
            customer_email: shared::ids::Email::parse("a@b.example").unwrap(),
            items: Vec::new(),
            currency: "EUR".into(),
            fingerprint: "fp".into(),
        };
        let crate::domain::Step::Save { order, .. } =
            crate::domain::decide(None, Tombstone::ReleaseChased, taken_over, crate::domain::Input::Send(&s), 5)
        else {
            panic!("the order is created");
        };
        orders.save(order, -1);
        orders.write(&conn).unwrap();
        assert!(chases(&conn).is_empty(), "confirmed, or chased by the order's row: {:?}", chases(&conn));
        let due = due_follow_ups(&conn, 10).unwrap();
        assert!(due.len() == 1 && due[0].0.order_id == taken_over && due[0].0.release_pending, "{due:?}");
        let mut orders = Orders::default();
        assert_eq!(orders.get(&conn, confirmed).unwrap().1, Tombstone::Cancelled);
    }
}
