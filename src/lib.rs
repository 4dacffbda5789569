//! The `webshop` command's library: the tester and operator tools that
//! work on a running shop from outside.
//!
//! - [`tools::inject`]: publish a message N times;
//! - [`tools::capture`]: record the bus to JSON lines, and replay it;
//! - [`tools::chaos`]: a fault-injecting MQTT proxy;
//! - [`tools::fuzz`]: random and malformed traffic at every topic;
//! - [`tools::bench`]: the benchmark (`webshop bench`);
//! - [`tools::mqtt`]: the small MQTT client they share;
//! - [`haproxy`]: the haproxy configuration for several fronts
//!   (`webshop haproxy-config`);
//! - [`cluster`]: a scaled-out shop on one machine (`webshop cluster`).
//!
//! The audit lives in `public-front` (`public_front::audit`), which also
//! serves it at `GET /admin/audit`.

pub mod cluster;
pub mod haproxy;
pub mod tools;
