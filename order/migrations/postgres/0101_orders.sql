-- Orders, cancel tombstones and release chases. `release_pending` is 0 or
-- 1, as on SQLite, so both backends read it the same way.
CREATE TABLE orders (
    order_id        TEXT PRIMARY KEY,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'rejected', 'cancelled')),
    version         BIGINT NOT NULL,
    customer_email  TEXT NOT NULL,
    items           TEXT NOT NULL,
    currency        TEXT NOT NULL,
    total_cents     BIGINT NOT NULL,
    fingerprint     TEXT NOT NULL,
    reason          TEXT,
    release_pending BIGINT NOT NULL DEFAULT 0 CHECK (release_pending IN (0, 1)),
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    -- When to chase inventory again (stock decision or release); NULL when
    -- nothing is outstanding.
    follow_up_at    BIGINT,
    follow_ups      BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX orders_follow_up ON orders (follow_up_at) WHERE follow_up_at IS NOT NULL;
CREATE INDEX orders_by_update ON orders (updated_at);
CREATE TABLE cancel_tombstones (
    order_id TEXT PRIMARY KEY,
    at       BIGINT NOT NULL
);
-- Releases chased for orders known only by their tombstone (inventory
-- reserved for an order that never arrived here): `orders/cancelled` is
-- re-sent at `follow_up_at` until inventory confirms.
CREATE TABLE release_chases (
    order_id     TEXT PRIMARY KEY,
    since        BIGINT NOT NULL,
    follow_up_at BIGINT NOT NULL,
    follow_ups   BIGINT NOT NULL DEFAULT 0
);
