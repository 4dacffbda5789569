-- The prune of carts past `db.retention.carts_secs` scans by age.
CREATE INDEX carts_by_update ON carts (updated_at);
