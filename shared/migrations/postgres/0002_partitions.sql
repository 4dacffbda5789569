-- Several instances of a service share its partitions (shared::ownership).
-- An instance holds a partition while it holds a session advisory lock on
-- it; this table says who claimed each partition last, so that a batch
-- can check, in its own transaction, that no other instance took the
-- partition over meanwhile (a stopped process that wakes up must not
-- commit what it read before).
CREATE TABLE partition_owners (
    partition INTEGER PRIMARY KEY,
    owner     TEXT NOT NULL,
    since     TIMESTAMPTZ NOT NULL DEFAULT now(),
    claims    BIGINT NOT NULL DEFAULT 1
);
