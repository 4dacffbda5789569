//! The order service's tables and every SQL statement that touches them.

use std::collections::HashMap;

use serde::Serialize;

use shared::clock::now_ms;
use shared::db::{Backend, Db, DbError, DbResult, Reader, Row, Tx};
use shared::ids::{CartId, Email, OrderId};
use shared::message::{OrderStatus, SendOrder};
use shared::view::{Order, ReleaseChase};

use crate::domain::{needs_follow_up, Tombstone};

/// The order service's migrations, one set per backend (`order/migrations/`).
pub fn migrations() -> shared::db::Migrations {
    shared::db::Migrations {
        sqlite: sqlx::migrate!("migrations/sqlite"),
        postgres: sqlx::migrate!("migrations/postgres"),
    }
}

const COLUMNS: &str = "order_id, status, version, customer_email, items, currency, total_cents, fingerprint, reason, release_pending, created_at, updated_at, cart_id";

/// An order from a row whose first 13 columns are `COLUMNS`.
fn order(r: &Row<'_>) -> DbResult<Order> {
    let id: String = r.get(0)?;
    let corrupt = |why: String| DbError::corrupt("orders", &id, why);
    let items: String = r.get(4)?;
    let status: String = r.get(1)?;
    Ok(Order {
        order_id: OrderId::parse(&id).map_err(|e| corrupt(e.to_string()))?,
        status: OrderStatus::parse(&status).ok_or_else(|| corrupt(format!("unknown status {status}")))?,
        version: r.get(2)?,
        customer_email: Some(Email::parse(&r.get::<String>(3)?).map_err(|e| corrupt(e.to_string()))?),
        items: serde_json::from_str(&items).map_err(|e| corrupt(e.to_string()))?,
        currency: r.get(5)?,
        total_cents: r.get(6)?,
        fingerprint: r.get(7)?,
        reason: r.get(8)?,
        release_pending: r.get::<i64>(9)? != 0,
        cart_id: match r.get::<Option<String>>(12)? {
            Some(c) => Some(CartId::parse(&c).map_err(|e| corrupt(e.to_string()))?),
            None => None,
        },
        created_at_ms: r.get(10)?,
        updated_at_ms: r.get(11)?,
    })
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
    fn slot(&mut self, tx: &mut Tx<'_>, id: OrderId) -> DbResult<&mut Slot> {
        if !self.slots.contains_key(&id) {
            self.read(tx, std::iter::once(id))?;
        }
        Ok(self.slots.get_mut(&id).expect("read above"))
    }

    /// Reads the orders `ids` into the batch: on PostgreSQL in one
    /// statement (called ahead for the whole batch), on SQLite one by one.
    pub fn read(&mut self, tx: &mut Tx<'_>, ids: impl Iterator<Item = OrderId>) -> DbResult<()> {
        let mut seen = std::collections::HashSet::new();
        let wanted: Vec<OrderId> = ids.filter(|id| !self.slots.contains_key(id) && seen.insert(*id)).collect();
        let keys: Vec<String> = wanted.iter().map(OrderId::to_string).collect();
        // One row per id whether or not the order exists: its columns
        // (NULL if it doesn't) and what its tombstone says: 0 none, 1 a
        // tombstone, 2 a tombstone whose release is chased. The chase is
        // looked up only behind a tombstone (every chase has one), so the
        // common case costs no extra lookup.
        let select = |from: &str| {
            format!(
                "SELECT {COLUMNS}, CAST(
                     CASE WHEN EXISTS (SELECT 1 FROM cancel_tombstones t WHERE t.order_id = k.id)
                          THEN CASE WHEN EXISTS (SELECT 1 FROM release_chases c WHERE c.order_id = k.id)
                                    THEN 2 ELSE 1 END
                          ELSE 0 END AS BIGINT), k.id
                 FROM {from} LEFT JOIN orders o ON o.order_id = k.id"
            )
        };
        let row = |r: &Row<'_>| -> DbResult<(String, Slot)> {
            let order = match r.get::<Option<String>>(0)? {
                Some(_) => Some(order(r)?),
                None => None,
            };
            let tombstone = r.get::<i64>(13)?;
            let slot = Slot {
                stored: order.is_some(),
                order,
                tombstoned: tombstone >= 1,
                chased: tombstone == 2,
                ..Slot::default()
            };
            Ok((r.get(14)?, slot))
        };
        let mut found: HashMap<String, Slot> = match tx.backend() {
            Backend::Sqlite => {
                let sql = select("(SELECT CAST($1 AS TEXT) AS id) k");
                let mut found = HashMap::new();
                for key in &keys {
                    found.extend(tx.query_opt(&sql, &[key], row)?);
                }
                found
            }
            Backend::Postgres if keys.is_empty() => HashMap::new(),
            Backend::Postgres => tx.query(&select("unnest($1::text[]) AS k(id)"), &[&keys], row)?.into_iter().collect(),
        };
        for (id, key) in wanted.into_iter().zip(keys) {
            let slot = found.remove(&key).ok_or_else(|| DbError::Misuse(format!("no row for order {key}")))?;
            self.slots.insert(id, slot);
        }
        Ok(())
    }

    /// The order, and what its tombstone says.
    pub fn get(&mut self, tx: &mut Tx<'_>, id: OrderId) -> DbResult<(Option<Order>, Tombstone)> {
        let slot = self.slot(tx, id)?;
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
    /// SQLite: a statement per row; PostgreSQL: one per kind of change.
    pub fn write(self, tx: &mut Tx<'_>) -> DbResult<()> {
        let now = now_ms();
        let mut w = Writes::default();
        for (id, slot) in self.slots {
            let key = id.to_string();
            if slot.new_tombstone {
                w.tombstones.push(key.clone());
            }
            match slot.chase {
                Some(Some(follow_up_at)) => {
                    w.chases.push(key.clone());
                    w.chase_follow_ups.push(follow_up_at);
                }
                Some(None) => w.chases_ended.push(key.clone()),
                None => {}
            }
            let (Some(follow_up_at), Some(o)) = (slot.save, slot.order) else { continue };
            let rows = if slot.stored { &mut w.updated } else { &mut w.created };
            let customer_email = o
                .customer_email
                .as_ref()
                .ok_or_else(|| DbError::corrupt("orders", &key, "an order to save has no customer email"))?;
            rows.customer_email.push(customer_email.as_str().to_owned());
            rows.items.push(serde_json::to_string(&o.items).map_err(|e| DbError::corrupt("orders", &key, e))?);
            rows.order_id.push(key);
            rows.status.push(o.status.as_str().to_owned());
            rows.version.push(o.version);
            rows.currency.push(o.currency);
            rows.total_cents.push(o.total_cents);
            rows.fingerprint.push(o.fingerprint);
            rows.reason.push(o.reason);
            rows.release_pending.push(o.release_pending as i64);
            rows.created_at.push(o.created_at_ms);
            rows.updated_at.push(o.updated_at_ms);
            rows.follow_up_at.push(follow_up_at);
            rows.cart_id.push(o.cart_id.map(|c| c.to_string()));
        }
        match tx.backend() {
            Backend::Sqlite => w.write_each(tx, now),
            Backend::Postgres => w.write_batched(tx, now),
        }
    }
}

/// A batch's changes to the order tables, column by column.
#[derive(Default)]
struct Writes {
    tombstones: Vec<String>,
    chases: Vec<String>,
    chase_follow_ups: Vec<i64>,
    chases_ended: Vec<String>,
    created: OrderRows,
    updated: OrderRows,
}

#[derive(Default)]
struct OrderRows {
    order_id: Vec<String>,
    status: Vec<String>,
    version: Vec<i64>,
    customer_email: Vec<String>,
    items: Vec<String>,
    currency: Vec<String>,
    total_cents: Vec<i64>,
    fingerprint: Vec<String>,
    reason: Vec<Option<String>>,
    release_pending: Vec<i64>,
    created_at: Vec<i64>,
    updated_at: Vec<i64>,
    follow_up_at: Vec<Option<i64>>,
    cart_id: Vec<Option<String>>,
}

const INSERT_TOMBSTONE: &str = "INSERT INTO cancel_tombstones (order_id, at)";
const INSERT_CHASE: &str = "INSERT INTO release_chases (order_id, since, follow_up_at)";
const INSERT_ORDER: &str = "INSERT INTO orders (order_id, status, version, customer_email, items, currency,
                                                 total_cents, fingerprint, reason, release_pending, created_at,
                                                 updated_at, follow_up_at, cart_id)";

impl Writes {
    fn write_each(self, tx: &mut Tx<'_>, now: i64) -> DbResult<()> {
        for key in &self.tombstones {
            tx.execute(&format!("{INSERT_TOMBSTONE} VALUES ($1, $2) ON CONFLICT DO NOTHING"), &[key, &now])?;
        }
        for (key, at) in self.chases.iter().zip(&self.chase_follow_ups) {
            tx.execute(&format!("{INSERT_CHASE} VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"), &[key, &now, at])?;
        }
        for key in &self.chases_ended {
            tx.execute("DELETE FROM release_chases WHERE order_id = $1", &[key])?;
        }
        let u = &self.updated;
        for i in 0..u.order_id.len() {
            tx.execute(
                "UPDATE orders SET status = $1, version = $2, reason = $3, release_pending = $4, updated_at = $5,
                     follow_up_at = $6, follow_ups = CASE WHEN $6 IS NULL THEN follow_ups ELSE 0 END
                 WHERE order_id = $7",
                &[
                    &u.status[i],
                    &u.version[i],
                    &u.reason[i],
                    &u.release_pending[i],
                    &u.updated_at[i],
                    &u.follow_up_at[i],
                    &u.order_id[i],
                ],
            )?;
        }
        let c = &self.created;
        for i in 0..c.order_id.len() {
            tx.execute(
                &format!("{INSERT_ORDER} VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"),
                &[
                    &c.order_id[i],
                    &c.status[i],
                    &c.version[i],
                    &c.customer_email[i],
                    &c.items[i],
                    &c.currency[i],
                    &c.total_cents[i],
                    &c.fingerprint[i],
                    &c.reason[i],
                    &c.release_pending[i],
                    &c.created_at[i],
                    &c.updated_at[i],
                    &c.follow_up_at[i],
                    &c.cart_id[i],
                ],
            )?;
        }
        Ok(())
    }

    fn write_batched(self, tx: &mut Tx<'_>, now: i64) -> DbResult<()> {
        if !self.tombstones.is_empty() {
            tx.execute(
                &format!("{INSERT_TOMBSTONE} SELECT id, $2 FROM unnest($1::text[]) AS id ON CONFLICT DO NOTHING"),
                &[&self.tombstones, &now],
            )?;
        }
        if !self.chases.is_empty() {
            tx.execute(
                &format!(
                    "{INSERT_CHASE} SELECT id, $3, at FROM unnest($1::text[], $2::bigint[]) AS c(id, at)
                     ON CONFLICT DO NOTHING"
                ),
                &[&self.chases, &self.chase_follow_ups, &now],
            )?;
        }
        if !self.chases_ended.is_empty() {
            tx.execute("DELETE FROM release_chases WHERE order_id = ANY($1)", &[&self.chases_ended])?;
        }
        let u = &self.updated;
        if !u.order_id.is_empty() {
            tx.execute(
                // A new follow-up starts its count over.
                "UPDATE orders AS o SET status = u.status, version = u.version, reason = u.reason,
                     release_pending = u.release_pending, updated_at = u.updated_at, follow_up_at = u.follow_up_at,
                     follow_ups = CASE WHEN u.follow_up_at IS NULL THEN o.follow_ups ELSE 0 END
                 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], $6::bigint[],
                                 $7::bigint[])
                      AS u(order_id, status, version, reason, release_pending, updated_at, follow_up_at)
                 WHERE o.order_id = u.order_id",
                &[&u.order_id, &u.status, &u.version, &u.reason, &u.release_pending, &u.updated_at, &u.follow_up_at],
            )?;
        }
        let c = &self.created;
        if !c.order_id.is_empty() {
            tx.execute(
                &format!(
                    "{INSERT_ORDER}
                     SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                                          $7::bigint[], $8::text[], $9::text[], $10::bigint[], $11::bigint[],
                                          $12::bigint[], $13::bigint[], $14::text[])"
                ),
                &[
                    &c.order_id,
                    &c.status,
                    &c.version,
                    &c.customer_email,
                    &c.items,
                    &c.currency,
                    &c.total_cents,
                    &c.fingerprint,
                    &c.reason,
                    &c.release_pending,
                    &c.created_at,
                    &c.updated_at,
                    &c.follow_up_at,
                    &c.cart_id,
                ],
            )?;
        }
        Ok(())
    }
}

/// One order, on the read pool.
pub async fn read(reader: &Reader, id: OrderId) -> DbResult<Option<Order>> {
    reader.fetch_opt(&format!("SELECT {COLUMNS} FROM orders WHERE order_id = $1"), &[&id.to_string()], order).await
}

/// PostgreSQL: rows another instance's timer holds are skipped (its pass
/// reschedules them in the same transaction).
fn skip_locked(tx: &Tx<'_>) -> &'static str {
    match tx.backend() {
        Backend::Sqlite => "",
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
    }
}

/// Orders whose follow-up is due, with how many follow-ups they had.
pub fn due_follow_ups(tx: &mut Tx<'_>, limit: i64) -> DbResult<Vec<(Order, i64)>> {
    let lock = skip_locked(tx);
    tx.query(
        &format!(
            "SELECT {COLUMNS}, follow_ups FROM orders WHERE follow_up_at <= $1 ORDER BY follow_up_at LIMIT $2{lock}"
        ),
        &[&now_ms(), &limit],
        |r| Ok((order(r)?, r.get(13)?)),
    )
}

pub fn reschedule(tx: &mut Tx<'_>, id: OrderId, at_ms: i64) -> DbResult<()> {
    tx.execute(
        "UPDATE orders SET follow_up_at = $1, follow_ups = follow_ups + 1 WHERE order_id = $2",
        &[&at_ms, &id.to_string()],
    )?;
    Ok(())
}

/// Releases chased for tombstones whose follow-up is due, with how many
/// follow-ups they had.
pub fn due_release_chases(tx: &mut Tx<'_>, limit: i64) -> DbResult<Vec<(OrderId, i64)>> {
    let lock = skip_locked(tx);
    tx.query(
        &format!(
            "SELECT order_id, follow_ups FROM release_chases WHERE follow_up_at <= $1 ORDER BY follow_up_at LIMIT $2{lock}"
        ),
        &[&now_ms(), &limit],
        |r| {
            let id: String = r.get(0)?;
            Ok((OrderId::parse(&id).map_err(|e| DbError::corrupt("release_chases", &id, e))?, r.get(1)?))
        },
    )
}

pub fn reschedule_chase(tx: &mut Tx<'_>, id: OrderId, at_ms: i64) -> DbResult<()> {
    tx.execute(
        "UPDATE release_chases SET follow_up_at = $1, follow_ups = follow_ups + 1 WHERE order_id = $2",
        &[&at_ms, &id.to_string()],
    )?;
    Ok(())
}

/// PostgreSQL: takes a transaction-scoped advisory lock per order, in
/// ascending order (the rows may not exist yet, so a row lock can't do):
/// two instances handling messages of one order take turns, and never
/// deadlock. Released at commit.
pub fn lock_orders(tx: &mut Tx<'_>, ids: &mut Vec<String>) -> DbResult<()> {
    if tx.backend() != Backend::Postgres || ids.is_empty() {
        return Ok(());
    }
    ids.sort_unstable();
    ids.dedup();
    tx.query(
        "SELECT CAST(0 AS BIGINT) FROM (SELECT pg_advisory_xact_lock(hashtextextended(id, 0))
         FROM (SELECT id FROM unnest($1::text[]) AS id ORDER BY id) ids) locked",
        &[&*ids],
        |_| Ok(()),
    )?;
    Ok(())
}

/// Every release chased for a tombstone (paged by order id), for the audit.
pub async fn release_chases(reader: &Reader, after: Option<&str>, limit: i64) -> DbResult<Vec<ReleaseChase>> {
    reader
        .fetch(
            "SELECT order_id, since, follow_ups, follow_up_at FROM release_chases
             WHERE ($1 IS NULL OR order_id > $1) ORDER BY order_id LIMIT $2",
            &[&after, &limit],
            |r| {
                Ok(ReleaseChase {
                    order_id: r.get(0)?,
                    since_ms: r.get(1)?,
                    follow_ups: r.get(2)?,
                    next_follow_up_at_ms: r.get(3)?,
                })
            },
        )
        .await
}

/// The `orders/send` body that recreates `o`, for re-requests.
pub fn send_body(o: &Order) -> Option<SendOrder> {
    Some(SendOrder {
        customer_email: o.customer_email.clone()?,
        items: o.items.clone(),
        currency: o.currency.clone(),
        fingerprint: o.fingerprint.clone(),
        cart_id: o.cart_id,
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

pub async fn counts(reader: &Reader) -> DbResult<Counts> {
    let rows = reader
        .fetch("SELECT status, COUNT(*) FROM orders GROUP BY status", &[], |r| {
            let status: String = r.get(0)?;
            let status =
                OrderStatus::parse(&status).ok_or_else(|| DbError::corrupt("orders", "status", status.clone()))?;
            Ok((status, r.get::<i64>(1)?))
        })
        .await?;
    let mut c = Counts::default();
    for (status, n) in rows {
        match status {
            OrderStatus::Pending => c.pending = n,
            OrderStatus::Confirmed => c.confirmed = n,
            OrderStatus::Rejected => c.rejected = n,
            OrderStatus::Cancelled => c.cancelled = n,
        }
    }
    c.release_pending = reader.scalar("SELECT COUNT(*) FROM orders WHERE release_pending = 1", &[]).await?;
    Ok(c)
}

/// Every order (paged by id), for the audit.
pub async fn list(reader: &Reader, after: Option<&str>, limit: i64) -> DbResult<Vec<Order>> {
    reader
        .fetch(
            &format!("SELECT {COLUMNS} FROM orders WHERE ($1 IS NULL OR order_id > $1) ORDER BY order_id LIMIT $2"),
            &[&after, &limit],
            order,
        )
        .await
}

/// Order gauges for `/metrics`.
pub async fn update_gauges(db: Db) {
    if let Ok(c) = counts(&db.reader).await {
        for (status, n) in
            [("pending", c.pending), ("confirmed", c.confirmed), ("rejected", c.rejected), ("cancelled", c.cancelled)]
        {
            metrics::gauge!("orders", "status" => status).set(n as f64);
        }
        metrics::gauge!("orders_release_pending").set(c.release_pending as f64);
    }
    if let Ok(c) = crate::carts::store::counts(&db.reader).await {
        metrics::gauge!("carts", "status" => "open").set(c.open as f64);
        metrics::gauge!("carts", "status" => "checked_out").set(c.checked_out as f64);
    }
}

/// The most recently changed orders, newest first.
pub async fn recent(reader: &Reader, limit: i64) -> DbResult<Vec<Order>> {
    reader.fetch(&format!("SELECT {COLUMNS} FROM orders ORDER BY updated_at DESC LIMIT $1"), &[&limit], order).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chases(tx: &mut Tx<'_>) -> Vec<(String, i64)> {
        tx.query("SELECT order_id, follow_ups FROM release_chases ORDER BY order_id", &[], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_tombstone_chases_its_release_until_confirmed_or_its_order_takes_over() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = shared::config::DbConfig { path: dir.path().join("order.db"), ..Default::default() };
        let db = Db::open(&cfg, &migrations()).await.unwrap();
        db.write(|tx| -> DbResult<()> {
            // A tombstone without a chase, as every tombstone was before
            // chases existed.
            tx.execute(
                "INSERT INTO cancel_tombstones (order_id, at) VALUES ($1, 1)",
                &[&OrderId(uuid::Uuid::nil()).to_string()],
            )?;
            let (old, confirmed, taken_over) =
                (OrderId(uuid::Uuid::nil()), OrderId(uuid::Uuid::from_u128(1)), OrderId(uuid::Uuid::from_u128(2)));
            let mut orders = Orders::default();
            assert_eq!(orders.get(tx, old)?.1, Tombstone::Cancelled);
            for id in [confirmed, taken_over] {
                assert_eq!(orders.get(tx, id)?.1, Tombstone::Absent);
                orders.tombstone(id);
                orders.chase_release(id, -1);
            }
            orders.write(tx)?;
            assert_eq!(chases(tx), [(confirmed.to_string(), 0), (taken_over.to_string(), 0)]);

            let due = due_release_chases(tx, 10)?;
            assert_eq!(due.len(), 2, "both due: {due:?}");
            reschedule_chase(tx, confirmed, now_ms() + 60_000)?;
            assert_eq!(due_release_chases(tx, 10)?, [(taken_over, 0)]);

            let mut orders = Orders::default();
            assert_eq!(orders.get(tx, confirmed)?.1, Tombstone::ReleaseChased);
            orders.end_chase(confirmed);
            assert_eq!(orders.get(tx, taken_over)?.1, Tombstone::ReleaseChased);
            let s = SendOrder {
                customer_email: shared::ids::Email::parse("a@b.example").unwrap(),
                items: Vec::new(),
                currency: "EUR".into(),
                fingerprint: "fp".into(),
                cart_id: None,
            };
            let crate::domain::Step::Save { order, .. } =
                crate::domain::decide(None, Tombstone::ReleaseChased, taken_over, crate::domain::Input::Send(&s), 5)
            else {
                panic!("the order is created");
            };
            orders.save(order, -1);
            orders.write(tx)?;
            let left = chases(tx);
            assert!(left.is_empty(), "confirmed, or chased by the order's row: {left:?}");
            let due = due_follow_ups(tx, 10)?;
            assert!(due.len() == 1 && due[0].0.order_id == taken_over && due[0].0.release_pending, "{due:?}");
            let mut orders = Orders::default();
            assert_eq!(orders.get(tx, confirmed)?.1, Tombstone::Cancelled);
            Ok(())
        })
        .await
        .unwrap();
        db.close().await;
    }
}
