-- Server-side carts: stock held for a cart until its checkout takes it or
-- the holds run out. available + reserved + held only moves with a
-- restock; held is what the holds rows add up to.
ALTER TABLE products ADD COLUMN held INTEGER NOT NULL DEFAULT 0 CHECK (held >= 0);
-- What each cart holds, per SKU. A cart's holds share one deadline (every
-- applied request renews them all).
CREATE TABLE holds (
    cart_id    TEXT NOT NULL,
    sku        TEXT NOT NULL,
    quantity   INTEGER NOT NULL CHECK (quantity > 0),
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (cart_id, sku)
);
-- The expiry timer's scan.
CREATE INDEX holds_by_expiry ON holds (expires_at);
-- Per cart: the last hold request applied (version), inventory's change
-- counter (seq), and whether the cart was checked out (closed: no hold
-- request applies any more). Also the row that serialises the consumer
-- and the expiry timer on one cart.
CREATE TABLE carts (
    cart_id    TEXT PRIMARY KEY,
    version    INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    closed     INTEGER NOT NULL DEFAULT 0 CHECK (closed IN (0, 1)),
    updated_at INTEGER NOT NULL
);
