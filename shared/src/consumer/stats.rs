//! What the consumer did, since start.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Counters of what the consumer did, since start.
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub applied: AtomicU64,
    pub deduplicated: AtomicU64,
    pub parked: AtomicU64,
    pub unparked: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub ignored: AtomicU64,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct StatsSnapshot {
    pub received: u64,
    pub applied: u64,
    pub deduplicated: u64,
    pub parked: u64,
    pub unparked: u64,
    pub dead_lettered: u64,
    pub ignored: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            received: g(&self.received),
            applied: g(&self.applied),
            deduplicated: g(&self.deduplicated),
            parked: g(&self.parked),
            unparked: g(&self.unparked),
            dead_lettered: g(&self.dead_lettered),
            ignored: g(&self.ignored),
        }
    }

    pub(super) fn add(&self, t: &StatsSnapshot) {
        let a = |c: &AtomicU64, v: u64| c.fetch_add(v, Ordering::Relaxed);
        a(&self.received, t.received);
        a(&self.applied, t.applied);
        a(&self.deduplicated, t.deduplicated);
        a(&self.parked, t.parked);
        a(&self.unparked, t.unparked);
        a(&self.dead_lettered, t.dead_lettered);
        a(&self.ignored, t.ignored);
    }
}
