-- Server-side carts. A cart's lines are one JSON array (at most 100
-- lines, always read and written whole). `holds_*` is what inventory last
-- said it holds for the cart (`inventory/held`, applied only if `holds_seq`
-- rises).
CREATE TABLE carts (
    cart_id           TEXT PRIMARY KEY,
    status            TEXT NOT NULL CHECK (status IN ('open', 'checked_out')),
    version           INTEGER NOT NULL,
    lines             TEXT NOT NULL,
    holds_version     INTEGER NOT NULL DEFAULT 0,
    holds_seq         INTEGER NOT NULL DEFAULT 0,
    holds_expire_at   INTEGER,
    holds_expired     INTEGER NOT NULL DEFAULT 0 CHECK (holds_expired IN (0, 1)),
    order_id          TEXT,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);
CREATE INDEX carts_by_update ON carts (updated_at);
-- The cart an order checks out: a re-request of the order's stock
-- decision must name it, so inventory still takes the cart's holds.
ALTER TABLE orders ADD COLUMN cart_id TEXT;
