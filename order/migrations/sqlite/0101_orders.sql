-- Orders, cancel tombstones and release chases. IF NOT EXISTS: databases
-- made before migrations already have these tables.
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
-- lands at a random place, once.
CREATE INDEX IF NOT EXISTS orders_follow_up ON orders(follow_up_at) WHERE follow_up_at IS NOT NULL;
-- No index on status: only the operators' counts read it (a scan), and
-- every status change would rewrite an entry at a random place.
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
