//! What inventory, order and public-front share, written once: the message
//! contract (ids, topics, envelope and bodies) and the machinery that makes
//! delivery exactly-once in effect over an at-least-once bus.
//!
//! Layout:
//! - [`ids`], [`topics`], [`message`]: the contract on the wire.
//! - [`bus`]: the MQTT connection (backoff, resubscribe, PUBACK futures,
//!   in-order manual acks).
//! - [`consumer`]: batch apply with [`inbox`] dedup, [`parking`] and
//!   [`dead_letter`], ack after commit.
//! - [`outbox`]: events written with the state change, relayed after commit.
//! - [`db`]: the storage seam: SQLite or PostgreSQL, the writer thread
//!   (every write transaction) and the read pool; [`clock`] the one time
//!   unit the tables store.
//! - [`config`], [`telemetry`], [`shutdown`], [`tls`]: process plumbing.

pub mod bus;
pub mod clock;
pub mod config;
pub mod consumer;
pub mod db;
pub mod dead_letter;
pub mod failpoints;
pub mod http;
pub mod ids;
pub mod inbox;
pub mod message;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod parking;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "test-pki")]
pub mod test_pki;
pub mod timeline;
pub mod tls;
pub mod topics;
pub mod trace;

/// Every binary that links `shared` (the `webshop` command, each node's
/// own binary, the tests) allocates with jemalloc: glibc's malloc and free
/// were a fifth of the front's CPU at full load (`webshop bench`), and
/// jemalloc costs a few MB per process, not mimalloc's ~24 MB.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
