-- Products and reservations. The CHECKs are the last line of defence
-- against overselling: a batch that would break one fails and is retried.
CREATE TABLE products (
    sku         TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    price_cents BIGINT NOT NULL CHECK (price_cents >= 0),
    currency    TEXT NOT NULL,
    available   BIGINT NOT NULL CHECK (available >= 0),
    reserved    BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    initial     BIGINT NOT NULL,
    restocked   BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE reservations (
    order_id    TEXT PRIMARY KEY,
    state       TEXT NOT NULL CHECK (state IN ('reserved', 'rejected', 'released')),
    lines       TEXT NOT NULL,
    fingerprint TEXT,
    reason      TEXT,
    decided_at  BIGINT,
    released_at BIGINT
);
