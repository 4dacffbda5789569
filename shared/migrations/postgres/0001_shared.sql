-- The shared machinery: inbox, outbox, parked events, dead letters, and
-- the order timeline. Ids are the text forms the messages carry; times
-- are milliseconds since the Unix epoch, as on SQLite.
CREATE TABLE inbox (
    message_id  TEXT PRIMARY KEY,
    topic       TEXT NOT NULL,
    order_id    TEXT,
    received_at BIGINT NOT NULL
);
CREATE INDEX inbox_by_time ON inbox (received_at);
-- `seq` comes from a sequence, assigned before commit: a reader must not
-- treat "everything up to the highest seq seen" as complete. An instance
-- publishes the rows it committed itself (`owner`, a random id per process)
-- while it holds their lease (`lease_until`); a row whose lease ran out is
-- claimed by whichever relay scans next.
CREATE TABLE outbox (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id  TEXT NOT NULL,
    topic       TEXT NOT NULL,
    order_id    TEXT,
    payload     BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    sent_at     BIGINT,
    owner       TEXT,
    lease_until BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX outbox_unsent ON outbox (seq) WHERE sent_at IS NULL;
CREATE TABLE parked (
    message_id      TEXT PRIMARY KEY,
    topic           TEXT NOT NULL,
    order_id        TEXT NOT NULL,
    payload         BYTEA NOT NULL,
    reason          TEXT NOT NULL,
    parked_at       BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL
);
CREATE INDEX parked_by_order ON parked (order_id);
CREATE INDEX parked_due ON parked (next_attempt_at);
CREATE TABLE dead_letters (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic         TEXT NOT NULL,
    message_id    TEXT,
    order_id      TEXT,
    payload       BYTEA NOT NULL,
    payload_bytes BIGINT NOT NULL,
    reason        TEXT NOT NULL,
    at            BIGINT NOT NULL
);
CREATE TABLE timeline (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id   TEXT NOT NULL,
    at         BIGINT NOT NULL,
    event      TEXT NOT NULL,
    topic      TEXT NOT NULL,
    message_id TEXT NOT NULL
);
CREATE INDEX timeline_by_order ON timeline (order_id);
