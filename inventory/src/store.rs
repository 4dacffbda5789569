//! Inventory's tables and every SQL statement that touches them.

use std::collections::hash_map::{Entry, HashMap};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use shared::clock::now_ms;
use shared::db::{Backend, Db, DbError, DbResult, Reader, Row, Tx};
use shared::ids::{CartId, OrderId, Sku};
use shared::view::{HoldView, Product, ReservationLine, ReservationView, StockView};

use crate::domain::{CartHolds, Change, HoldChange, Level, PriceHistory, Reservation};

/// Inventory's migrations, one set per backend (`inventory/migrations/`).
pub fn migrations() -> shared::db::Migrations {
    shared::db::Migrations {
        sqlite: sqlx::migrate!("migrations/sqlite"),
        postgres: sqlx::migrate!("migrations/postgres"),
    }
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
pub async fn seed_if_empty(db: &Db, products: &[SeedProduct]) -> DbResult<usize> {
    let products = products.to_vec();
    db.write(move |tx| {
        if tx.backend() == Backend::Postgres {
            // Instances starting together seed one at a time; the next
            // one's count (a fresh snapshot after the lock) sees the rows.
            tx.scalar(
                "SELECT CAST(0 AS BIGINT) FROM (SELECT pg_advisory_xact_lock(hashtextextended('inventory seed', 0))) l",
                &[],
            )?;
        }
        if tx.scalar("SELECT COUNT(*) FROM products", &[])? > 0 {
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
fn insert_product(tx: &mut Tx<'_>, p: &SeedProduct) -> DbResult<()> {
    tx.execute(
        "INSERT INTO products (sku, name, description, price_cents, currency, available, initial)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[&p.sku.as_str(), &p.name, &p.description, &p.price_cents, &p.currency, &p.stock, &p.stock],
    )?;
    Ok(())
}

fn product(r: &Row<'_>) -> DbResult<Product> {
    Ok(Product {
        sku: r.get(0)?,
        name: r.get(1)?,
        description: r.get(2)?,
        price_cents: r.get(3)?,
        currency: r.get(4)?,
        available: r.get(5)?,
        held: r.get(6)?,
    })
}

const PRODUCT_COLUMNS: &str = "sku, name, description, price_cents, currency, available, held";

/// One page of the catalog, by SKU, optionally filtered by `q` on name and
/// description. Returns the page and whether more follow.
pub async fn list_products(
    reader: &Reader,
    q: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> DbResult<(Vec<Product>, bool)> {
    let pattern = q.map(|q| {
        let escaped = q.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        format!("%{escaped}%")
    });
    let rows = reader
        .fetch(
            &format!(
                "SELECT {PRODUCT_COLUMNS} FROM products
                 WHERE ($1 IS NULL OR name LIKE $1 ESCAPE '\\' OR description LIKE $1 ESCAPE '\\')
                   AND ($2 IS NULL OR sku > $2)
                 ORDER BY sku LIMIT $3"
            ),
            &[&pattern, &after, &(limit + 1)],
            product,
        )
        .await?;
    let more = rows.len() as i64 > limit;
    Ok((rows.into_iter().take(limit as usize).collect(), more))
}

pub async fn get_product(reader: &Reader, sku: &Sku) -> DbResult<Option<Product>> {
    reader.fetch_opt(&format!("SELECT {PRODUCT_COLUMNS} FROM products WHERE sku = $1"), &[&sku.as_str()], product).await
}

pub async fn get_products(reader: &Reader, skus: &[Sku]) -> DbResult<Vec<Product>> {
    let mut out = Vec::with_capacity(skus.len());
    for sku in skus {
        if let Some(p) = get_product(reader, sku).await? {
            out.push(p);
        }
    }
    Ok(out)
}

fn parse_lines(order_id: &str, s: &str) -> DbResult<Vec<ReservationLine>> {
    serde_json::from_str(s).map_err(|e| DbError::corrupt("reservations", order_id, e))
}

fn reservation_from(
    order_id: &str,
    state: &str,
    lines: &str,
    fingerprint: Option<String>,
    reason: Option<String>,
) -> DbResult<Reservation> {
    let lines = parse_lines(order_id, lines)?;
    let missing = |what| DbError::corrupt("reservations", order_id, format!("{what} is NULL"));
    Ok(match state {
        "reserved" => Reservation::Reserved { lines, fingerprint: fingerprint.ok_or_else(|| missing("fingerprint"))? },
        "rejected" => Reservation::Rejected {
            fingerprint: fingerprint.ok_or_else(|| missing("fingerprint"))?,
            reason: reason.ok_or_else(|| missing("reason"))?,
        },
        "released" => Reservation::Released { lines, fingerprint },
        other => return Err(DbError::corrupt("reservations", order_id, format!("unknown state {other}"))),
    })
}

/// The stock, reservations and cart holds one consumer transaction (or
/// one round of the expiry timer) touches: read once, changed in memory by
/// the handlers, written back once (see `shared::consumer::Handler`). What
/// it didn't read ahead is read on first use. On PostgreSQL each read and
/// each write is one statement for the whole batch (rows as arrays), not
/// one per row.
#[derive(Default)]
pub struct Stock {
    reservations: HashMap<OrderId, Held>,
    carts: HashMap<CartId, CartEntry>,
    /// `None`: no such product.
    levels: HashMap<Sku, Option<Level>>,
    /// Price and currency of each product in `levels`.
    prices: HashMap<Sku, (i64, String)>,
    /// `(price_cents, replaced_at)` of the prices replaced since the grace
    /// window of the first order that asked, per SKU asked about.
    replaced: HashMap<Sku, Vec<(i64, i64)>>,
    /// Change of the stock columns per SKU in this batch.
    deltas: BTreeMap<Sku, Delta>,
}

/// How a product's stock columns moved in a batch.
#[derive(Clone, Copy, Default)]
struct Delta {
    available: i64,
    reserved: i64,
    held: i64,
}

/// A cart's holds as the batch has them (`None`: inventory never saw the
/// cart).
struct CartEntry {
    holds: Option<CartHolds>,
    changed: bool,
}

struct Held {
    reservation: Option<Reservation>,
    changed: bool,
    decided_at: Option<i64>,
    released_at: Option<i64>,
}

const RESERVATION_COLUMNS: &str = "order_id, state, lines, fingerprint, reason";

fn reservation_of(r: &Row<'_>) -> DbResult<(String, Reservation)> {
    let id: String = r.get(0)?;
    let reservation = reservation_from(&id, &r.get::<String>(1)?, &r.get::<String>(2)?, r.get(3)?, r.get(4)?)?;
    Ok((id, reservation))
}

impl Stock {
    /// What inventory holds for `order_id`.
    pub fn reservation(&mut self, tx: &mut Tx<'_>, order_id: OrderId) -> DbResult<Option<Reservation>> {
        let held = match self.reservations.entry(order_id) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let found = tx.query_opt(
                    &format!("SELECT {RESERVATION_COLUMNS} FROM reservations WHERE order_id = $1"),
                    &[&order_id.to_string()],
                    reservation_of,
                )?;
                e.insert(Held::unchanged(found.map(|(_, r)| r)))
            }
        };
        Ok(held.reservation.clone())
    }

    /// Reads the reservations of `order_ids` into the batch in one
    /// statement (PostgreSQL).
    pub fn read_reservations(&mut self, tx: &mut Tx<'_>, order_ids: impl Iterator<Item = OrderId>) -> DbResult<()> {
        let mut seen = std::collections::HashSet::new();
        let wanted: Vec<OrderId> =
            order_ids.filter(|id| !self.reservations.contains_key(id) && seen.insert(*id)).collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = wanted.iter().map(OrderId::to_string).collect();
        let mut found: HashMap<String, Reservation> = tx
            .query(
                &format!("SELECT {RESERVATION_COLUMNS} FROM reservations WHERE order_id = ANY($1)"),
                &[&keys],
                reservation_of,
            )?
            .into_iter()
            .collect();
        for (id, key) in wanted.into_iter().zip(keys) {
            self.reservations.insert(id, Held::unchanged(found.remove(&key)));
        }
        Ok(())
    }

    /// Reads the stock levels and prices of `skus` into the batch; on
    /// PostgreSQL locks their rows, in SKU order (the same order in every
    /// instance, so two batches never deadlock over them).
    pub fn lock<'a>(&mut self, tx: &mut Tx<'_>, skus: impl Iterator<Item = &'a Sku>) -> DbResult<()> {
        let mut wanted: Vec<&Sku> = skus.filter(|s| !self.levels.contains_key(*s)).collect();
        if wanted.is_empty() {
            return Ok(());
        }
        wanted.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        wanted.dedup();
        type Product = (String, Level, i64, String);
        let product = |r: &Row<'_>| -> DbResult<Product> {
            let level = Level { available: r.get(1)?, reserved: r.get(2)?, held: r.get(5)? };
            Ok((r.get(0)?, level, r.get(3)?, r.get(4)?))
        };
        let mut found: HashMap<String, Product> = HashMap::new();
        match tx.backend() {
            Backend::Sqlite => {
                for sku in &wanted {
                    let row = tx.query_opt(
                        "SELECT sku, available, reserved, price_cents, currency, held FROM products WHERE sku = $1",
                        &[&sku.as_str()],
                        product,
                    )?;
                    found.extend(row.map(|p| (p.0.clone(), p)));
                }
            }
            Backend::Postgres => {
                let keys: Vec<String> = wanted.iter().map(|s| s.to_string()).collect();
                let rows = tx.query(
                    "SELECT sku, available, reserved, price_cents, currency, held FROM products
                     WHERE sku = ANY($1) ORDER BY sku FOR UPDATE",
                    &[&keys],
                    product,
                )?;
                found.extend(rows.into_iter().map(|p| (p.0.clone(), p)));
            }
        }
        for sku in wanted {
            let product = found.remove(sku.as_str());
            if let Some((_, _, price, currency)) = &product {
                self.prices.insert(sku.clone(), (*price, currency.clone()));
            }
            self.levels.insert(sku.clone(), product.map(|p| p.1));
        }
        Ok(())
    }

    /// Stock levels of the given SKUs (unknown ones are absent), with this
    /// batch's changes.
    pub fn levels<'a>(
        &mut self,
        tx: &mut Tx<'_>,
        skus: impl Iterator<Item = &'a Sku> + Clone,
    ) -> DbResult<BTreeMap<Sku, Level>> {
        self.lock(tx, skus.clone())?;
        Ok(skus.filter_map(|sku| self.levels.get(sku).copied().flatten().map(|level| (sku.clone(), level))).collect())
    }

    /// The current price and currency of each of `skus` that exists, with
    /// the prices replaced at or after `since_ms`.
    pub fn price_histories<'a>(
        &mut self,
        tx: &mut Tx<'_>,
        skus: impl Iterator<Item = &'a Sku> + Clone,
        since_ms: i64,
    ) -> DbResult<BTreeMap<Sku, PriceHistory>> {
        self.lock(tx, skus.clone())?;
        let mut wanted: Vec<Sku> = skus.clone().filter(|s| !self.replaced.contains_key(*s)).cloned().collect();
        wanted.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        wanted.dedup();
        let keys: Vec<String> = wanted.iter().map(Sku::to_string).collect();
        let history = |r: &Row<'_>| -> DbResult<(String, i64, i64)> { Ok((r.get(0)?, r.get(1)?, r.get(2)?)) };
        let rows = match tx.backend() {
            Backend::Sqlite => {
                let mut rows = Vec::new();
                for key in &keys {
                    rows.extend(tx.query(
                        "SELECT sku, price_cents, replaced_at FROM price_history WHERE sku = $1 AND replaced_at >= $2",
                        &[key, &since_ms],
                        history,
                    )?);
                }
                rows
            }
            Backend::Postgres if keys.is_empty() => Vec::new(),
            Backend::Postgres => tx.query(
                "SELECT sku, price_cents, replaced_at FROM price_history WHERE sku = ANY($1) AND replaced_at >= $2",
                &[&keys, &since_ms],
                history,
            )?,
        };
        let mut by_sku: HashMap<String, Vec<(i64, i64)>> = HashMap::new();
        for (sku, price, at) in rows {
            by_sku.entry(sku).or_default().push((price, at));
        }
        for (sku, key) in wanted.into_iter().zip(keys) {
            self.replaced.insert(sku, by_sku.remove(&key).unwrap_or_default());
        }
        Ok(skus
            .filter_map(|sku| {
                let (current_cents, currency) = self.prices.get(sku)?.clone();
                let replaced = self.replaced.get(sku)?.iter().filter(|(_, at)| *at >= since_ms).copied().collect();
                Some((sku.clone(), PriceHistory { currency, current_cents, replaced }))
            })
            .collect())
    }

    fn move_stock(&mut self, lines: &[ReservationLine], to_available: i64) {
        for ReservationLine { sku, quantity: qty } in lines {
            let delta = to_available * qty;
            if let Some(Some(level)) = self.levels.get_mut(sku) {
                level.available += delta;
                level.reserved -= delta;
            }
            let d = self.deltas.entry(sku.clone()).or_default();
            d.available += delta;
            d.reserved -= delta;
        }
    }

    /// What inventory holds for `cart`, with this batch's changes (`None`:
    /// it never saw the cart).
    pub fn cart(&mut self, tx: &mut Tx<'_>, cart: CartId) -> DbResult<Option<CartHolds>> {
        self.read_carts(tx, std::iter::once(cart))?;
        Ok(self.carts.get(&cart).and_then(|c| c.holds.clone()))
    }

    /// Reads the holds of `carts` into the batch. On PostgreSQL it locks
    /// their rows first, in cart order: the row of a cart serialises the
    /// consumer and the expiry timer on its holds, and is always locked
    /// before any product row (see [`claim_expired_carts`]).
    pub fn read_carts(&mut self, tx: &mut Tx<'_>, carts: impl Iterator<Item = CartId>) -> DbResult<()> {
        let mut wanted: Vec<CartId> = carts.filter(|c| !self.carts.contains_key(c)).collect();
        if wanted.is_empty() {
            return Ok(());
        }
        wanted.sort_unstable();
        wanted.dedup();
        let keys: Vec<String> = wanted.iter().map(CartId::to_string).collect();
        let cart_row =
            |r: &Row<'_>| -> DbResult<(String, i64, i64, i64)> { Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)) };
        let hold_row =
            |r: &Row<'_>| -> DbResult<(String, String, i64, i64)> { Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)) };
        let (cart_rows, hold_rows) = match tx.backend() {
            Backend::Sqlite => {
                let (mut carts, mut holds) = (Vec::new(), Vec::new());
                for key in &keys {
                    carts.extend(tx.query(
                        "SELECT cart_id, version, seq, closed FROM carts WHERE cart_id = $1",
                        &[key],
                        cart_row,
                    )?);
                    holds.extend(tx.query(
                        "SELECT cart_id, sku, quantity, expires_at FROM holds WHERE cart_id = $1",
                        &[key],
                        hold_row,
                    )?);
                }
                (carts, holds)
            }
            Backend::Postgres => {
                let carts = tx.query(
                    "SELECT cart_id, version, seq, closed FROM carts
                     WHERE cart_id = ANY($1) ORDER BY cart_id FOR UPDATE",
                    &[&keys],
                    cart_row,
                )?;
                let holds = tx.query(
                    "SELECT cart_id, sku, quantity, expires_at FROM holds WHERE cart_id = ANY($1)",
                    &[&keys],
                    hold_row,
                )?;
                (carts, holds)
            }
        };
        let mut found: HashMap<String, CartHolds> = cart_rows
            .into_iter()
            .map(|(id, version, seq, closed)| {
                (id, CartHolds { version, seq, closed: closed != 0, lines: BTreeMap::new(), expires_at_ms: None })
            })
            .collect();
        for (id, sku, quantity, expires_at) in hold_rows {
            let cart = found.get_mut(&id).ok_or_else(|| DbError::corrupt("holds", &id, "no carts row"))?;
            let sku = Sku::parse(&sku).map_err(|e| DbError::corrupt("holds", &id, e))?;
            cart.lines.insert(sku, quantity);
            cart.expires_at_ms = Some(cart.expires_at_ms.map_or(expires_at, |at| at.min(expires_at)));
        }
        for (cart, key) in wanted.into_iter().zip(keys) {
            self.carts.insert(cart, CartEntry { holds: found.remove(&key), changed: false });
        }
        Ok(())
    }

    /// The SKUs `cart` holds (as read into the batch).
    pub fn held_skus(&self, cart: CartId) -> Vec<Sku> {
        self.carts
            .get(&cart)
            .and_then(|c| c.holds.as_ref())
            .map(|h| h.lines.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Applies `change` to `cart`: its holds, and the units that move
    /// between `available` and `held`.
    pub fn apply_holds(&mut self, cart: CartId, change: &HoldChange) {
        for (sku, &m) in &change.moved {
            if let Some(Some(level)) = self.levels.get_mut(sku) {
                level.available -= m;
                level.held += m;
            }
            let d = self.deltas.entry(sku.clone()).or_default();
            d.available -= m;
            d.held += m;
        }
        self.carts.insert(cart, CartEntry { holds: Some(change.cart.clone()), changed: true });
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

    /// Writes every change: the products whose stock moved, the changed
    /// reservations. The CHECK (available >= 0) is the last line of
    /// defence. SKU order (a BTreeMap): rows not locked ahead are locked in
    /// the same order everywhere.
    pub fn write(self, tx: &mut Tx<'_>) -> DbResult<()> {
        let moved: Vec<(String, Delta)> = self
            .deltas
            .iter()
            .filter(|(_, d)| d.available != 0 || d.reserved != 0 || d.held != 0)
            .map(|(sku, d)| (sku.to_string(), *d))
            .collect();
        let carts: Vec<(CartId, CartHolds)> = self
            .carts
            .into_iter()
            .filter_map(|(id, c)| if c.changed { c.holds.map(|h| (id, h)) } else { None })
            .collect();
        let mut rows = Rows::default();
        for (id, h) in self.reservations.into_iter().filter(|(_, h)| h.changed) {
            let Some(reservation) = h.reservation else { continue };
            let (state, lines, fingerprint, reason) = match reservation {
                Reservation::Reserved { lines, fingerprint } => ("reserved", lines, Some(fingerprint), None),
                Reservation::Rejected { fingerprint, reason } => {
                    ("rejected", Vec::new(), Some(fingerprint), Some(reason))
                }
                Reservation::Released { lines, fingerprint } => ("released", lines, fingerprint, None),
            };
            rows.order_id.push(id.to_string());
            rows.state.push(state.to_owned());
            rows.lines.push(serde_json::to_string(&lines).map_err(|e| DbError::corrupt("reservations", id, e))?);
            rows.fingerprint.push(fingerprint);
            rows.reason.push(reason);
            rows.decided_at.push(h.decided_at);
            rows.released_at.push(h.released_at);
        }
        match tx.backend() {
            Backend::Sqlite => {
                for (sku, d) in &moved {
                    tx.execute(
                        "UPDATE products SET available = available + $1, reserved = reserved + $2, held = held + $3
                         WHERE sku = $4",
                        &[&d.available, &d.reserved, &d.held, sku],
                    )?;
                }
                for i in 0..rows.order_id.len() {
                    tx.execute(
                        &format!("INSERT INTO reservations {UPSERT} VALUES ($1, $2, $3, $4, $5, $6, $7) {ON_CONFLICT}"),
                        &[
                            &rows.order_id[i],
                            &rows.state[i],
                            &rows.lines[i],
                            &rows.fingerprint[i],
                            &rows.reason[i],
                            &rows.decided_at[i],
                            &rows.released_at[i],
                        ],
                    )?;
                }
            }
            Backend::Postgres => {
                if !moved.is_empty() {
                    let skus: Vec<String> = moved.iter().map(|(sku, _)| sku.clone()).collect();
                    let column = |f: fn(&Delta) -> i64| moved.iter().map(|(_, d)| f(d)).collect::<Vec<i64>>();
                    tx.execute(
                        "UPDATE products p SET available = p.available + d.available,
                             reserved = p.reserved + d.reserved, held = p.held + d.held
                         FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])
                              AS d(sku, available, reserved, held)
                         WHERE p.sku = d.sku",
                        &[&skus, &column(|d| d.available), &column(|d| d.reserved), &column(|d| d.held)],
                    )?;
                }
                if !rows.order_id.is_empty() {
                    tx.execute(
                        &format!(
                            "INSERT INTO reservations {UPSERT}
                             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                                  $6::bigint[], $7::bigint[])
                             {ON_CONFLICT}"
                        ),
                        &[
                            &rows.order_id,
                            &rows.state,
                            &rows.lines,
                            &rows.fingerprint,
                            &rows.reason,
                            &rows.decided_at,
                            &rows.released_at,
                        ],
                    )?;
                }
            }
        }
        write_carts(tx, &carts)
    }
}

/// Writes the changed carts: their rows, and their holds in place of the
/// ones they had.
fn write_carts(tx: &mut Tx<'_>, carts: &[(CartId, CartHolds)]) -> DbResult<()> {
    if carts.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let mut ids = Vec::new();
    let (mut versions, mut seqs, mut closed) = (Vec::new(), Vec::new(), Vec::new());
    let (mut hold_carts, mut skus, mut quantities, mut expiries) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (id, cart) in carts {
        ids.push(id.to_string());
        versions.push(cart.version);
        seqs.push(cart.seq);
        closed.push(i64::from(cart.closed));
        for (sku, &q) in &cart.lines {
            hold_carts.push(id.to_string());
            skus.push(sku.to_string());
            quantities.push(q);
            // Only a cart that holds nothing has no deadline.
            expiries.push(cart.expires_at_ms.unwrap_or(now));
        }
    }
    const UPSERT_CART: &str = "ON CONFLICT (cart_id) DO UPDATE SET version = excluded.version, seq = excluded.seq,
         closed = excluded.closed, updated_at = excluded.updated_at";
    match tx.backend() {
        Backend::Sqlite => {
            for i in 0..ids.len() {
                tx.execute(
                    &format!(
                        "INSERT INTO carts (cart_id, version, seq, closed, updated_at) VALUES ($1, $2, $3, $4, $5)
                         {UPSERT_CART}"
                    ),
                    &[&ids[i], &versions[i], &seqs[i], &closed[i], &now],
                )?;
                tx.execute("DELETE FROM holds WHERE cart_id = $1", &[&ids[i]])?;
            }
            for i in 0..hold_carts.len() {
                tx.execute(
                    "INSERT INTO holds (cart_id, sku, quantity, expires_at) VALUES ($1, $2, $3, $4)",
                    &[&hold_carts[i], &skus[i], &quantities[i], &expiries[i]],
                )?;
            }
        }
        Backend::Postgres => {
            tx.execute(
                &format!(
                    "INSERT INTO carts (cart_id, version, seq, closed, updated_at)
                     SELECT c.*, $5 FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) AS c
                     {UPSERT_CART}"
                ),
                &[&ids, &versions, &seqs, &closed, &now],
            )?;
            tx.execute("DELETE FROM holds WHERE cart_id = ANY($1)", &[&ids])?;
            if !hold_carts.is_empty() {
                tx.execute(
                    "INSERT INTO holds (cart_id, sku, quantity, expires_at)
                     SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])",
                    &[&hold_carts, &skus, &quantities, &expiries],
                )?;
            }
        }
    }
    Ok(())
}

/// The expiry timer's claim: up to `limit` carts with a hold that ran out
/// before `now_ms`, by earliest deadline. On PostgreSQL their rows are
/// locked and rows another instance holds (its consumer or its timer) are
/// skipped, so instances never wait on each other here; the caller then
/// locks product rows in SKU order, like the consumer.
/// Forgets up to `limit` carts (inventory's record of their holds) that
/// hold nothing and weren't changed since `before` (ms). Returns how many.
pub fn prune_carts(tx: &mut Tx<'_>, before: i64, limit: i64) -> DbResult<u64> {
    tx.execute(
        "DELETE FROM carts WHERE cart_id IN
             (SELECT c.cart_id FROM carts c
              WHERE c.updated_at < $1 AND NOT EXISTS (SELECT 1 FROM holds h WHERE h.cart_id = c.cart_id)
              ORDER BY c.updated_at LIMIT $2)",
        &[&before, &limit],
    )
}

pub fn claim_expired_carts(tx: &mut Tx<'_>, now_ms: i64, limit: i64) -> DbResult<Vec<CartId>> {
    let sql = match tx.backend() {
        Backend::Sqlite => {
            "SELECT DISTINCT cart_id FROM
                 (SELECT cart_id FROM holds WHERE expires_at < $1 ORDER BY expires_at LIMIT $2)"
        }
        Backend::Postgres => {
            "SELECT cart_id FROM carts
             WHERE cart_id IN (SELECT cart_id FROM holds WHERE expires_at < $1 ORDER BY expires_at LIMIT $2)
             ORDER BY cart_id FOR UPDATE SKIP LOCKED"
        }
    };
    tx.query(sql, &[&now_ms, &limit], |r| {
        let id: String = r.get(0)?;
        CartId::parse(&id).map_err(|e| DbError::corrupt("holds", &id, e))
    })
}

/// The reservation upsert's columns and what a second write keeps.
const UPSERT: &str = "(order_id, state, lines, fingerprint, reason, decided_at, released_at)";
const ON_CONFLICT: &str = "ON CONFLICT (order_id) DO UPDATE SET
     state = excluded.state, lines = excluded.lines,
     released_at = COALESCE(excluded.released_at, reservations.released_at)";

/// Changed reservations, column by column.
#[derive(Default)]
struct Rows {
    order_id: Vec<String>,
    state: Vec<String>,
    lines: Vec<String>,
    fingerprint: Vec<Option<String>>,
    reason: Vec<Option<String>>,
    decided_at: Vec<Option<i64>>,
    released_at: Vec<Option<i64>>,
}

impl Held {
    fn unchanged(reservation: Option<Reservation>) -> Held {
        Held { reservation, changed: false, decided_at: None, released_at: None }
    }
}

/// Every reservation (paged by order id), for the audit.
pub async fn list_reservations(reader: &Reader, after: Option<&str>, limit: i64) -> DbResult<Vec<ReservationView>> {
    reader
        .fetch(
            "SELECT order_id, state, lines, reason, decided_at, released_at FROM reservations
             WHERE ($1 IS NULL OR order_id > $1) ORDER BY order_id LIMIT $2",
            &[&after, &limit],
            reservation_row,
        )
        .await
}

fn reservation_row(r: &Row<'_>) -> DbResult<ReservationView> {
    let order_id: String = r.get(0)?;
    Ok(ReservationView {
        state: r.get(1)?,
        lines: parse_lines(&order_id, &r.get::<String>(2)?)?,
        reason: r.get(3)?,
        decided_at_ms: r.get(4)?,
        released_at_ms: r.get(5)?,
        order_id,
    })
}

pub async fn reservation_view(reader: &Reader, order_id: OrderId) -> DbResult<Option<ReservationView>> {
    reader
        .fetch_opt(
            "SELECT order_id, state, lines, reason, decided_at, released_at FROM reservations WHERE order_id = $1",
            &[&order_id.to_string()],
            reservation_row,
        )
        .await
}

pub async fn stock(reader: &Reader) -> DbResult<Vec<StockView>> {
    reader
        .fetch("SELECT sku, available, reserved, initial, restocked, held FROM products ORDER BY sku", &[], |r| {
            Ok(StockView {
                sku: r.get(0)?,
                available: r.get(1)?,
                reserved: r.get(2)?,
                held: r.get(5)?,
                initial: r.get(3)?,
                restocked: r.get(4)?,
            })
        })
        .await
}

/// Every hold, by cart and SKU, after `after` (a cart id and a SKU), for
/// the audit and operators. A hold past its deadline is listed until the
/// expiry timer gives it back.
pub async fn list_holds(reader: &Reader, after: Option<(&str, &str)>, limit: i64) -> DbResult<Vec<HoldView>> {
    let (cart, sku) = (after.map(|a| a.0), after.map(|a| a.1));
    reader
        .fetch(
            "SELECT cart_id, sku, quantity, expires_at FROM holds
             WHERE ($1 IS NULL OR cart_id > $1 OR (cart_id = $1 AND sku > $2))
             ORDER BY cart_id, sku LIMIT $3",
            &[&cart, &sku, &limit],
            |r| Ok(HoldView { cart_id: r.get(0)?, sku: r.get(1)?, quantity: r.get(2)?, expires_at_ms: r.get(3)? }),
        )
        .await
}

/// Why an admin change was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("a different product with SKU {0} already exists")]
    Exists(String),
    #[error("no product with SKU {0}")]
    Unknown(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Adds a product with its initial stock; returns it as the catalog shows
/// it, and whether this call created it. A product already added with the
/// same name, description, price, currency and initial stock is the same
/// request again (a retry whose answer was lost), not a conflict.
pub async fn add_product(db: &Db, p: &SeedProduct) -> Result<(Product, bool), AdminError> {
    let row = p.clone();
    let created = db
        .write(move |tx| -> Result<bool, AdminError> {
            let existing = tx.query_opt(
                "SELECT name, description, price_cents, currency, initial FROM products WHERE sku = $1",
                &[&row.sku.as_str()],
                |r| {
                    Ok((
                        r.get::<String>(0)?,
                        r.get::<String>(1)?,
                        r.get::<i64>(2)?,
                        r.get::<String>(3)?,
                        r.get::<i64>(4)?,
                    ))
                },
            )?;
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
        let lock = match tx.backend() {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        };
        let old: i64 = tx
            .query_opt(&format!("SELECT available FROM products WHERE sku = $1{lock}"), &[&key.as_str()], |r| r.get(0))?
            .ok_or_else(|| AdminError::Unknown(key.to_string()))?;
        if let Some(price) = price_cents {
            record_replaced_price(tx, &key, price, now_ms())?;
            tx.execute("UPDATE products SET price_cents = $1 WHERE sku = $2", &[&price, &key.as_str()])?;
        }
        if let Some(new) = available {
            tx.execute(
                "UPDATE products SET available = $1, restocked = restocked + ($1 - $2) WHERE sku = $3",
                &[&new, &old, &key.as_str()],
            )?;
        }
        Ok(())
    })
    .await?;
    get_product(&db.reader, sku).await?.ok_or_else(|| AdminError::Unknown(sku.to_string()))
}

/// Stock gauges for `/metrics`.
pub async fn update_gauges(db: Db) {
    let sums = db
        .reader
        .fetch_opt(
            "SELECT CAST(COALESCE(SUM(available), 0) AS BIGINT), CAST(COALESCE(SUM(reserved), 0) AS BIGINT),
                    CAST(COALESCE(SUM(held), 0) AS BIGINT)
             FROM products",
            &[],
            |r| Ok((r.get::<i64>(0)?, r.get::<i64>(1)?, r.get::<i64>(2)?)),
        )
        .await;
    if let Ok(Some((available, reserved, held))) = sums {
        metrics::gauge!("stock_available_units").set(available as f64);
        metrics::gauge!("stock_reserved_units").set(reserved as f64);
        metrics::gauge!("stock_held_units").set(held as f64);
    }
    if let Ok(n) = db.reader.scalar("SELECT COUNT(*) FROM holds", &[]).await {
        metrics::gauge!("holds_live").set(n as f64);
    }
    if let Ok(n) = db.reader.scalar("SELECT COUNT(*) FROM reservations WHERE state = 'reserved'", &[]).await {
        metrics::gauge!("reservations_live").set(n as f64);
    }
}

// price history: what inventory needs to be the price authority (an order
// may quote a price a product had within the grace window).

/// Before a price change: keeps the price `sku` had until `now_ms`, if
/// `new_price` replaces it.
fn record_replaced_price(tx: &mut Tx<'_>, sku: &Sku, new_price: i64, now_ms: i64) -> DbResult<()> {
    tx.execute(
        "INSERT INTO price_history (sku, price_cents, replaced_at)
         SELECT sku, price_cents, $1 FROM products WHERE sku = $2 AND price_cents <> $3",
        &[&now_ms, &sku.as_str(), &new_price],
    )?;
    Ok(())
}
