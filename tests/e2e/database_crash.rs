//! The shop on PostgreSQL loses nothing when the database itself goes
//! away under load: PostgreSQL crashes and restarts while customers order.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_crash_under_load_loses_nothing() {
    // A cluster of its own: the restart must not hit other tests.
    let Some(cluster) = postgres::own() else { return };
    let url = cluster.fresh_database().await;
    let shop = Arc::new(Shop::start_on(StoreAt { url: Some(url) }).await.unwrap());
    let placed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (shop, placed, stop) = (shop.clone(), placed.clone(), stop.clone());
        tokio::spawn(async move {
            load(&shop, 8, "pg-crash", move || {
                placed.fetch_add(1, Ordering::Relaxed);
                stop.load(Ordering::Relaxed)
            })
            .await
        })
    };
    eventually("orders flowing before the crash", || async { (placed.load(Ordering::Relaxed) >= 80).then_some(()) })
        .await;
    cluster.crash_restart();
    let after = placed.load(Ordering::Relaxed);
    eventually("orders flowing after the restart", || async {
        (placed.load(Ordering::Relaxed) >= after + 80).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let ids = load.await.unwrap();
    assert!(ids.len() >= 100, "only {} orders accepted", ids.len());
    all_settle(&shop, &ids).await;
    shop.audit().await;
}
