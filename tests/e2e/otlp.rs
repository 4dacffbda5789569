//! Span export over OTLP/HTTP into a fake collector (an axum server that
//! decodes the protobuf requests). One order is placed with a known
//! `traceparent`; the exported spans must form its path as one trace:
//! front → order and inventory → order → front, each hop the child of the
//! span that sent the message. The batch processor is told to wait ten
//! minutes, so the spans can only arrive through the flush on shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use prost::Message;
use serde_json::json;

use crate::crash::Proc;
use crate::helpers::*;

/// An exported span, as the collector saw it.
#[derive(Clone, Debug)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: HashMap<String, String>,
}

struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn strings(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
            _ => None,
        })
        .collect()
}

impl Collector {
    async fn start() -> Collector {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let store = spans.clone();
        let handler = move |headers: HeaderMap, body: Bytes| {
            let store = store.clone();
            async move {
                let protobuf = headers.get(header::CONTENT_TYPE).is_some_and(|v| v == "application/x-protobuf");
                let Ok(request) = ExportTraceServiceRequest::decode(body).map_err(|e| eprintln!("bad OTLP body: {e}"))
                else {
                    return (StatusCode::BAD_REQUEST, Vec::new());
                };
                if !protobuf {
                    return (StatusCode::UNSUPPORTED_MEDIA_TYPE, Vec::new());
                }
                let mut store = store.lock().unwrap();
                for resource in request.resource_spans {
                    let attrs = strings(&resource.resource.map(|r| r.attributes).unwrap_or_default());
                    let service = attrs.get("service.name").cloned().unwrap_or_default();
                    for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                        store.push(Span {
                            service: service.clone(),
                            name: span.name,
                            trace_id: hex(&span.trace_id),
                            span_id: hex(&span.span_id),
                            parent: hex(&span.parent_span_id),
                            attributes: strings(&span.attributes),
                        });
                    }
                }
                (StatusCode::OK, ExportTraceServiceResponse::default().encode_to_vec())
            }
        };
        let app = axum::Router::new().route("/v1/traces", axum::routing::post(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Collector { url, spans }
    }

    /// The spans of one trace.
    fn trace(&self, trace_id: &str) -> Vec<Span> {
        self.spans.lock().unwrap().iter().filter(|s| s.trace_id == trace_id).cloned().collect()
    }
}

fn env(pairs: &[(&str, String)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    // Nothing leaves before shutdown: the spans arrive through the flush.
    env.insert("OTEL_BSP_SCHEDULE_DELAY".into(), "600000".into());
    env
}

/// Places one order through `front` with a known trace context; returns
/// (trace id, the caller's span id) once the order is confirmed.
async fn place_traced_order(front: &str) -> (String, String) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_idle_timeout(shared::http::CLIENT_POOL_IDLE_TIMEOUT)
        .build()
        .unwrap();
    eventually("the front to be ready", || async {
        let r = http.get(format!("{front}/readyz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let caller = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    let body = json!({"customer_email": "ada@example.com", "items": [{"sku": "APRON-CNV-001", "quantity": 1}]});
    let r = http
        .post(format!("{front}/api/orders"))
        .header("Idempotency-Key", format!("otlp-{trace_id}"))
        .header("traceparent", format!("00-{trace_id}-{caller}-01"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<serde_json::Value>().await.unwrap()["order_id"].as_str().unwrap().to_owned();
    eventually(&format!("order {id} to be confirmed"), || async {
        let v: serde_json::Value = http.get(format!("{front}/api/orders/{id}")).send().await.ok()?.json().await.ok()?;
        (v["status"] == "confirmed").then_some(())
    })
    .await;
    (trace_id, caller)
}

/// The one span named `name` (by service, or by `node` attribute when all
/// nodes share one process), with its parent.
fn find<'a>(spans: &'a [Span], who: impl Fn(&Span) -> bool, name: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| who(s) && s.name.starts_with(name)).collect();
    assert!(!found.is_empty(), "no `{name}` span in the trace:\n{spans:#?}");
    found[0]
}

/// The path of one order as a tree: every hop the child of the sender.
fn assert_one_tree(spans: &[Span], caller: &str, who: impl Fn(&Span, &str) -> bool) {
    let front = find(spans, |s| who(s, "public-front"), "public-front place order");
    assert_eq!(front.parent, caller, "the front's span continues the caller's trace");
    let order_send = find(spans, |s| who(s, "order"), "order orders/send");
    assert_eq!(order_send.parent, front.span_id, "order handles the front's message");
    let inventory_send = find(spans, |s| who(s, "inventory"), "inventory orders/send");
    assert_eq!(inventory_send.parent, front.span_id, "inventory handles the front's message");
    // Parked first or not, order applies inventory's decision under its span.
    let in_stock: Vec<&Span> =
        spans.iter().filter(|s| who(s, "order") && s.name.starts_with("order inventory/in-stock")).collect();
    assert!(
        in_stock.iter().any(|s| s.parent == inventory_send.span_id),
        "order's in-stock span is not a child of inventory's:\n{spans:#?}"
    );
    let order_spans: Vec<&str> = spans.iter().filter(|s| who(s, "order")).map(|s| s.span_id.as_str()).collect();
    let status = find(spans, |s| who(s, "public-front"), "public-front orders/status");
    assert!(order_spans.contains(&status.parent.as_str()), "the front's status span is a child of an order span");
}

/// Four processes, each exporting as its own service (`log.otlp_endpoint`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_one_order_form_one_trace_across_nodes() {
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let [broker, inventory, order, front] = [free_port(), free_port(), free_port(), free_port()];
    let otlp = collector.url.clone();
    let mut procs = [
        Proc::spawn(
            dir.path(),
            "broker",
            "broker",
            env(&[
                ("WEBSHOP_BROKER__LISTEN", format!("127.0.0.1:{broker}")),
                ("WEBSHOP_BROKER__METRICS_LISTEN", format!("127.0.0.1:{}", free_port())),
            ]),
            None,
        ),
        Proc::spawn(
            dir.path(),
            "inventory",
            "inventory",
            env(&[
                ("WEBSHOP_INVENTORY__LISTEN", format!("127.0.0.1:{inventory}")),
                ("WEBSHOP_INVENTORY__BUS__PORT", broker.to_string()),
                ("WEBSHOP_INVENTORY__DB__PATH", dir.path().join("inventory.db").display().to_string()),
                ("WEBSHOP_INVENTORY__LOG__OTLP_ENDPOINT", otlp.clone()),
            ]),
            None,
        ),
        Proc::spawn(
            dir.path(),
            "order",
            "order",
            env(&[
                ("WEBSHOP_ORDER__LISTEN", format!("127.0.0.1:{order}")),
                ("WEBSHOP_ORDER__BUS__PORT", broker.to_string()),
                ("WEBSHOP_ORDER__DB__PATH", dir.path().join("order.db").display().to_string()),
                ("WEBSHOP_ORDER__LOG__OTLP_ENDPOINT", otlp.clone()),
            ]),
            None,
        ),
        Proc::spawn(
            dir.path(),
            "front",
            "front",
            env(&[
                ("WEBSHOP_FRONT__LISTEN", format!("127.0.0.1:{front}")),
                ("WEBSHOP_FRONT__BUS__PORT", broker.to_string()),
                ("WEBSHOP_FRONT__INVENTORY_URL", format!("http://127.0.0.1:{inventory}")),
                ("WEBSHOP_FRONT__ORDER_URL", format!("http://127.0.0.1:{order}")),
                ("WEBSHOP_FRONT__LOG__OTLP_ENDPOINT", otlp.clone()),
            ]),
            None,
        ),
    ];
    let (trace_id, caller) = place_traced_order(&format!("http://127.0.0.1:{front}")).await;
    assert!(collector.trace(&trace_id).is_empty(), "spans were exported before shutdown");

    for p in procs.iter_mut().skip(1) {
        let status = p.terminate().await;
        assert!(status.success(), "{} exited with {status}:\n{}", p.name, p.tail());
    }
    let spans = collector.trace(&trace_id);
    assert_one_tree(&spans, &caller, |s, node| s.service == node);
}

/// `webshop up`: one process, one exporter (from the standard
/// `OTEL_EXPORTER_OTLP_ENDPOINT`), the nodes told apart by `node`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webshop_up_exports_one_trace_per_order() {
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let [broker, inventory, order, front] = [free_port(), free_port(), free_port(), free_port()];
    let arg = |flag: &str, port: u16| [flag.to_owned(), port.to_string()];
    let mut args = vec!["up".to_owned(), "--data-dir".to_owned(), dir.path().join("data").display().to_string()];
    for a in [
        arg("--broker-port", broker),
        arg("--inventory-port", inventory),
        arg("--order-port", order),
        arg("--front-port", front),
    ] {
        args.extend(a);
    }
    let mut up =
        Proc::spawn_args(dir.path(), "up", args, env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.clone())]), None);
    let (trace_id, caller) = place_traced_order(&format!("http://127.0.0.1:{front}")).await;
    let status = up.terminate().await;
    assert!(status.success(), "webshop up exited with {status}:\n{}", up.tail());

    let spans = collector.trace(&trace_id);
    assert!(spans.iter().all(|s| s.service == "webshop"), "{spans:#?}");
    assert_one_tree(&spans, &caller, |s, node| s.attributes.get("node").map(String::as_str) == Some(node));
}
