//! What inventory, order and public-front share, written once: the message
//! contract (ids, topics, envelope and bodies) and the machinery that makes
//! delivery exactly-once in effect over an at-least-once bus.
//!
//! Layout:
//! - [`ids`], [`topics`], [`message`]: the contract on the wire;
//!   [`view`]: the bodies of the nodes' own HTTP APIs that other nodes read.
//! - [`bus`]: the MQTT connection (backoff, resubscribe, PUBACK futures,
//!   in-order manual acks).
//! - [`consumer`]: batch apply with [`inbox`] dedup, [`parking`] and
//!   [`dead_letter`], ack after commit.
//! - [`outbox`]: events written with the state change, relayed after commit.
//! - [`ownership`]: which instance of a service consumes which partitions.
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
pub mod ownership;
pub mod parking;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "test-pki")]
pub mod test_pki;
pub mod timeline;
pub mod tls;
pub mod topics;
pub mod trace;
pub mod view;
