-- The shared machinery: inbox, outbox, parked events, dead letters, and
-- the order timeline. IF NOT EXISTS: databases made before migrations
-- already have these tables.
CREATE TABLE IF NOT EXISTS inbox (
    message_id  TEXT PRIMARY KEY,
    topic       TEXT NOT NULL,
    order_id    TEXT,
    received_at INTEGER NOT NULL
) WITHOUT ROWID;
-- For the prune: ids come from many producers, so the table's order is not
-- arrival order. Entries append at the index's end.
CREATE INDEX IF NOT EXISTS inbox_by_time ON inbox(received_at);
-- `seq` is the rowid, not AUTOINCREMENT (which writes sqlite_sequence on
-- every insert): a new row still gets max(seq) + 1, and the relay, the only
-- reader of seq, only needs unsent rows in write order. No index on
-- message_id: nothing looks an event up by it, and ids are fresh UUIDv7s.
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,
    topic      TEXT NOT NULL,
    order_id   TEXT,
    payload    BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    sent_at    INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox(seq) WHERE sent_at IS NULL;
CREATE TABLE IF NOT EXISTS parked (
    message_id      TEXT PRIMARY KEY,
    topic           TEXT NOT NULL,
    order_id        TEXT NOT NULL,
    payload         BLOB NOT NULL,
    reason          TEXT NOT NULL,
    parked_at       INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS parked_by_order ON parked(order_id);
CREATE TABLE IF NOT EXISTS dead_letters (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    topic         TEXT NOT NULL,
    message_id    TEXT,
    order_id      TEXT,
    payload       BLOB NOT NULL,
    payload_bytes INTEGER NOT NULL,
    reason        TEXT NOT NULL,
    at            INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS timeline (
    id         INTEGER PRIMARY KEY, -- rowid: write order (no AUTOINCREMENT bookkeeping)
    order_id   TEXT NOT NULL,
    at         INTEGER NOT NULL,
    event      TEXT NOT NULL,
    topic      TEXT NOT NULL,
    message_id TEXT NOT NULL
);
-- No index on order_id: order ids are hashes, so every note would update an
-- entry on a random page of that index, one more page for the commit to
-- write per message (about 16 % of the end-to-end order rate, measured with
-- `webshop bench`). Notes only append; the rare lookup of one order scans
-- them, as it scans the outbox.
DROP INDEX IF EXISTS timeline_by_order;
