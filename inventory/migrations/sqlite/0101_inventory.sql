-- Products and reservations. IF NOT EXISTS: databases made before
-- migrations already have these tables.
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
