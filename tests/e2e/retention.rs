//! The prune forgets the machinery's old records (sent events, inbox ids,
//! timeline notes) on both stores, and nothing newer than the retention.

use serde_json::json;

use crate::helpers::*;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Days the test ages records by: well past every default retention.
const AGE_MS: i64 = 10 * 24 * 3600 * 1000;

/// The machinery's tables with the column the prune reads, and a row kept
/// out of it (unsent events are never pruned).
const TABLES: [(&str, &str); 3] = [("outbox", "sent_at"), ("inbox", "received_at"), ("timeline", "at")];

/// Runs `sql` against the order service's database, whichever store it is.
async fn order_db(shop: &Shop, sql: &str) -> i64 {
    db(shop, "order", sql).await
}

/// Runs `sql` against `service`'s database: a count for a SELECT, else the
/// rows changed.
async fn db(shop: &Shop, service: &str, sql: &str) -> i64 {
    match &shop.store.url {
        Some(url) => {
            use sqlx::{Connection, Row};
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            let schema = if service == "order" { "orders" } else { service };
            sqlx::query(&format!("SET search_path TO {schema}")).execute(&mut c).await.unwrap();
            let n = match sql.starts_with("SELECT") {
                true => sqlx::query(sql).fetch_one(&mut c).await.unwrap().get::<i64, _>(0),
                false => sqlx::query(sql).execute(&mut c).await.unwrap().rows_affected() as i64,
            };
            let _ = c.close().await;
            n
        }
        None => {
            use sqlx::Row;
            let file = shop.dir.path().join(format!("{service}.db"));
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", file.display())).await.unwrap();
            let n = match sql.starts_with("SELECT") {
                true => sqlx::query(sql).fetch_one(&pool).await.unwrap().get::<i64, _>(0),
                false => sqlx::query(sql).execute(&pool).await.unwrap().rows_affected() as i64,
            };
            pool.close().await;
            n
        }
    }
}

async fn old_records_are_pruned_and_new_ones_kept(shop: Shop) {
    let mut ids = Vec::new();
    for i in 0..3 {
        let (code, body, _) = shop
            .place(
                &format!("prune-{i}"),
                json!({"customer_email": "p@example.com", "items": [{"sku": "FUEL-230G-001", "quantity": 1}]}),
            )
            .await;
        assert_eq!(code, 202, "{body}");
        ids.push(body["order_id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        shop.wait_status(id, "confirmed").await;
    }
    eventually("every event sent", || async {
        (order_db(&shop, "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").await == 0).then_some(())
    })
    .await;
    // Age what the first orders left behind, then place one more: its
    // records are new and must stay.
    for (table, column) in TABLES {
        order_db(&shop, &format!("UPDATE {table} SET {column} = {column} - {AGE_MS}")).await;
    }
    // Orders applied as they came leave no timeline notes (their inbox rows
    // stand for them): write an aged note and a fresh one.
    for (at, id) in [(now_ms() - AGE_MS, "old"), (now_ms(), "new")] {
        order_db(
            &shop,
            &format!(
                "INSERT INTO timeline (order_id, at, event, topic, message_id)
                 VALUES ('{id}', {at}, 'duplicate', 'orders/send', '{id}')"
            ),
        )
        .await;
    }
    for (table, column) in TABLES {
        let aged =
            order_db(&shop, &format!("SELECT COUNT(*) FROM {table} WHERE {column} < {}", now_ms() - AGE_MS / 2)).await;
        assert!(aged > 0, "aged rows in {table}");
    }
    let (code, body, _) = shop
        .place(
            "prune-new",
            json!({"customer_email": "p@example.com", "items": [{"sku": "FUEL-230G-001", "quantity": 1}]}),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    shop.wait_status(body["order_id"].as_str().unwrap(), "confirmed").await;

    let cutoff = now_ms() - AGE_MS / 2;
    for (table, column) in TABLES {
        eventually(&format!("old rows of {table} pruned"), || async {
            let old = order_db(&shop, &format!("SELECT COUNT(*) FROM {table} WHERE {column} < {cutoff}")).await;
            (old == 0).then_some(())
        })
        .await;
        let new = order_db(&shop, &format!("SELECT COUNT(*) FROM {table} WHERE {column} >= {cutoff}")).await;
        assert!(new > 0, "the newest order's rows in {table} stay");
    }
    // The books are untouched by the prune.
    for id in &ids {
        shop.wait_status(id, "confirmed").await;
    }

    // A checked-out cart, aged past `db.retention.carts_secs` at both
    // services, is forgotten by both; a fresh one stays.
    let base = shop.front_url("");
    for key in ["prune-cart-old", "prune-cart-new"] {
        checkout_cart_until_accepted(&shop.http, &base, key, "FUEL-230G-001", 1, std::time::Duration::from_secs(30))
            .await
            .unwrap();
    }
    for service in ["order", "inventory"] {
        eventually(&format!("{service} to know both carts"), || async {
            (db(&shop, service, "SELECT COUNT(*) FROM carts").await == 2).then_some(())
        })
        .await;
    }
    let old =
        order_db(&shop, "SELECT COUNT(*) FROM carts WHERE updated_at = (SELECT MIN(updated_at) FROM carts)").await;
    assert_eq!(old, 1);
    for service in ["order", "inventory"] {
        let aged = db(
            &shop,
            service,
            &format!(
                "UPDATE carts SET updated_at = updated_at - {}
                 WHERE updated_at = (SELECT MIN(updated_at) FROM carts)",
                40 * 24 * 3600 * 1000_i64
            ),
        )
        .await;
        assert_eq!(aged, 1, "{service}");
        eventually(&format!("{service} to forget the old cart"), || async {
            (db(&shop, service, "SELECT COUNT(*) FROM carts").await == 1).then_some(())
        })
        .await;
    }
    shop.audit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_records_are_pruned_on_sqlite() {
    old_records_are_pruned_and_new_ones_kept(Shop::start(BrokerKind::Embedded).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_records_are_pruned_on_postgres() {
    let Some(shop) = Shop::start_postgres().await else { return };
    old_records_are_pruned_and_new_ones_kept(shop).await;
}
