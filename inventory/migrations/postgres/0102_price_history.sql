-- Prices a product had before its current one, and until when: inventory
-- accepts an order quoting one of them within the grace window.
CREATE TABLE price_history (
    sku         TEXT NOT NULL,
    price_cents BIGINT NOT NULL,
    replaced_at BIGINT NOT NULL
);
CREATE INDEX price_history_by_sku ON price_history (sku, replaced_at);
