-- Prices a product had before its current one, and until when: inventory
-- accepts an order quoting one of them within the grace window.
CREATE TABLE IF NOT EXISTS price_history (
    sku         TEXT NOT NULL,
    price_cents INTEGER NOT NULL,
    replaced_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS price_history_by_sku ON price_history (sku, replaced_at);
