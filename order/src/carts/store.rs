//! The `carts` table: a cart is one row, its lines one JSON array, read and
//! written whole.

use shared::db::{DbError, DbResult, Reader, Row, Tx};
use shared::ids::{CartId, OrderId};
use shared::view::{Cart, CartStatus};

const COLUMNS: &str = "cart_id, status, version, lines, holds_version, holds_seq, holds_expire_at, holds_expired, \
                       order_id, created_at, updated_at";

/// A cart from a row of `COLUMNS`.
fn cart(r: &Row<'_>) -> DbResult<Cart> {
    let id: String = r.get(0)?;
    let corrupt = |why: String| DbError::corrupt("carts", &id, why);
    let status: String = r.get(1)?;
    let lines: String = r.get(3)?;
    let order_id = match r.get::<Option<String>>(8)? {
        Some(o) => Some(OrderId::parse(&o).map_err(|e| corrupt(e.to_string()))?),
        None => None,
    };
    Ok(Cart {
        cart_id: CartId::parse(&id).map_err(|e| corrupt(e.to_string()))?,
        status: CartStatus::parse(&status).ok_or_else(|| corrupt(format!("unknown status {status}")))?,
        version: r.get(2)?,
        lines: serde_json::from_str(&lines).map_err(|e| corrupt(e.to_string()))?,
        holds_version: r.get(4)?,
        holds_seq: r.get(5)?,
        holds_expire_at_ms: r.get(6)?,
        holds_expired: r.get::<i64>(7)? != 0,
        order_id,
        created_at_ms: r.get(9)?,
        updated_at_ms: r.get(10)?,
    })
}

/// The cart, in the consumer's transaction.
pub fn get(tx: &mut Tx<'_>, id: CartId) -> DbResult<Option<Cart>> {
    tx.query_opt(&format!("SELECT {COLUMNS} FROM carts WHERE cart_id = $1"), &[&id.to_string()], cart)
}

/// Inserts or replaces the cart.
pub fn save(tx: &mut Tx<'_>, c: &Cart) -> DbResult<()> {
    let key = c.cart_id.to_string();
    let lines = serde_json::to_string(&c.lines).map_err(|e| DbError::corrupt("carts", &key, e))?;
    tx.execute(
        &format!(
            "INSERT INTO carts ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (cart_id) DO UPDATE SET status = excluded.status, version = excluded.version,
                 lines = excluded.lines, holds_version = excluded.holds_version, holds_seq = excluded.holds_seq,
                 holds_expire_at = excluded.holds_expire_at, holds_expired = excluded.holds_expired,
                 order_id = excluded.order_id, updated_at = excluded.updated_at"
        ),
        &[
            &key,
            &c.status.as_str(),
            &c.version,
            &lines,
            &c.holds_version,
            &c.holds_seq,
            &c.holds_expire_at_ms,
            &(c.holds_expired as i64),
            &c.order_id.map(|o| o.to_string()),
            &c.created_at_ms,
            &c.updated_at_ms,
        ],
    )?;
    Ok(())
}

/// Forgets up to `limit` carts nobody changed since `before` (ms): by
/// then a cart holds nothing, since every expiry inventory reports
/// changes it. Returns how many.
pub fn prune(tx: &mut Tx<'_>, before: i64, limit: i64) -> DbResult<u64> {
    tx.execute(
        "DELETE FROM carts WHERE cart_id IN
             (SELECT cart_id FROM carts WHERE updated_at < $1 ORDER BY updated_at LIMIT $2)",
        &[&before, &limit],
    )
}

/// One cart, on the read pool.
pub async fn read(reader: &Reader, id: CartId) -> DbResult<Option<Cart>> {
    reader.fetch_opt(&format!("SELECT {COLUMNS} FROM carts WHERE cart_id = $1"), &[&id.to_string()], cart).await
}

/// The most recently changed open carts, newest first (the dashboard).
pub async fn recent_open(reader: &Reader, limit: i64) -> DbResult<Vec<Cart>> {
    reader
        .fetch(
            &format!("SELECT {COLUMNS} FROM carts WHERE status = 'open' ORDER BY updated_at DESC LIMIT $1"),
            &[&limit],
            cart,
        )
        .await
}

/// Carts by status.
#[derive(Debug, Default, serde::Serialize)]
pub struct Counts {
    pub open: i64,
    pub checked_out: i64,
}

pub async fn counts(reader: &Reader) -> DbResult<Counts> {
    let rows = reader
        .fetch("SELECT status, COUNT(*) FROM carts GROUP BY status", &[], |r| {
            Ok((r.get::<String>(0)?, r.get::<i64>(1)?))
        })
        .await?;
    let mut counts = Counts::default();
    for (status, n) in rows {
        match CartStatus::parse(&status) {
            Some(CartStatus::Open) => counts.open = n,
            Some(CartStatus::CheckedOut) => counts.checked_out = n,
            None => return Err(DbError::corrupt("carts", status, "unknown status")),
        }
    }
    Ok(counts)
}
