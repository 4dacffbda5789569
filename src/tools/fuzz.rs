//! `webshop fuzz`: random and malformed traffic at every topic of the shop,
//! seeded and rate-limited, to show that no message a node can receive
//! stops it, and that what can't be applied is dead-lettered.
//!
//! What it publishes ([`Kind`]): random bytes, empty payloads, envelopes cut
//! short, envelopes with the wrong body, `type`, ids, schema version,
//! missing or extra fields, huge numbers, bad quantities, unknown SKUs and
//! very long strings; payloads around the 64 KiB application limit and up
//! to `max_bytes`; topics below the prefix that nobody consumes; QoS 0 and
//! QoS 1. It also listens to the shop's topics and publishes copies of the
//! real messages it sees: the same bytes, the same `message_id` with a
//! changed body, and the same `message_id` about another real order.
//!
//! Every message the fuzzer makes up is about an order id of its own (a
//! fresh one each time), so what a node accepts of it stays consistent and
//! the books still balance. Real orders are only touched through copies
//! under their original `message_id`, which the inbox must drop. (A
//! well-formed message with a fresh id about a real order is a forgery the
//! shop can't tell from the real thing: protect the broker.)
//!
//! [`Generator`] makes the messages and does no I/O; [`run`] paces and
//! publishes them. The same seed makes the same choices; the copies depend
//! on what the bus carried meanwhile.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rumqttc::{Event, Outgoing, Packet, QoS};
use serde::Serialize;
use serde_json::{json, Value};
use shared::ids::{MessageId, OrderId};
use shared::message::{Envelope, MAX_MESSAGE_BYTES};
use shared::topics::Topic;
use tokio_util::sync::CancellationToken;

/// Default for the largest payload: well below the 4 MiB packet limit of
/// the broker and the nodes, and far beyond the 64 KiB application limit.
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;
/// How many real messages, order ids and SKUs seen on the bus are kept to
/// copy from.
const KEEP_SEEN: usize = 512;
/// Copies pick from the latest few messages half of the time: the races
/// are where a message is still in flight.
const RECENT: usize = 16;

/// What the fuzzer runs against, and for how long.
#[derive(Debug, Clone)]
pub struct Fuzz {
    /// The broker, `host:port`.
    pub broker: String,
    pub prefix: String,
    /// Username and password, when the broker requires them.
    pub credentials: Option<(String, String)>,
    pub seed: u64,
    /// Stop after this long (`None`: when `count` is reached).
    pub duration: Option<Duration>,
    /// Stop after this many messages (`None`: when `duration` is over).
    pub count: Option<u64>,
    /// Most messages per second.
    pub rate: f64,
    /// Largest payload, in bytes.
    pub max_bytes: usize,
}

/// The kinds of message the fuzzer publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A well-formed message about a fresh order (the baseline).
    Valid,
    RandomBytes,
    Empty,
    /// An envelope cut at a random byte.
    TruncatedJson,
    /// The topic's `type`, another topic's body.
    WrongBody,
    /// A `type` that isn't the topic's.
    WrongType,
    /// `message_id` not a UUID, missing, nil, or not a string.
    BadMessageId,
    /// `order_id` not a UUID, missing, nil, or not a string.
    BadOrderId,
    WrongVersion,
    MissingField,
    ExtraField,
    /// Numbers beyond i64/u64, floats, 1e300.
    HugeNumber,
    /// Zero, negative, fractional or too large quantities.
    BadQuantity,
    UnknownSku,
    LongString,
    /// A valid envelope padded to within 64 bytes of the 64 KiB limit.
    NearLimit,
    /// Beyond the 64 KiB limit, up to `max_bytes`.
    Large,
    /// A topic below the prefix that isn't one of the shop's.
    UnknownTopic,
    /// A real message seen on the bus, the same bytes.
    Copy,
    /// A real message's `message_id` with a changed body.
    MutatedCopy,
    /// A real message's `message_id` about another real order.
    SwappedOrderId,
}

impl Kind {
    const ALL: [Kind; 21] = [
        Kind::Valid,
        Kind::RandomBytes,
        Kind::Empty,
        Kind::TruncatedJson,
        Kind::WrongBody,
        Kind::WrongType,
        Kind::BadMessageId,
        Kind::BadOrderId,
        Kind::WrongVersion,
        Kind::MissingField,
        Kind::ExtraField,
        Kind::HugeNumber,
        Kind::BadQuantity,
        Kind::UnknownSku,
        Kind::LongString,
        Kind::NearLimit,
        Kind::Large,
        Kind::UnknownTopic,
        Kind::Copy,
        Kind::MutatedCopy,
        Kind::SwappedOrderId,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Valid => "valid",
            Kind::RandomBytes => "random_bytes",
            Kind::Empty => "empty",
            Kind::TruncatedJson => "truncated_json",
            Kind::WrongBody => "wrong_body",
            Kind::WrongType => "wrong_type",
            Kind::BadMessageId => "bad_message_id",
            Kind::BadOrderId => "bad_order_id",
            Kind::WrongVersion => "wrong_version",
            Kind::MissingField => "missing_field",
            Kind::ExtraField => "extra_field",
            Kind::HugeNumber => "huge_number",
            Kind::BadQuantity => "bad_quantity",
            Kind::UnknownSku => "unknown_sku",
            Kind::LongString => "long_string",
            Kind::NearLimit => "near_limit",
            Kind::Large => "large",
            Kind::UnknownTopic => "unknown_topic",
            Kind::Copy => "copy",
            Kind::MutatedCopy => "mutated_copy",
            Kind::SwappedOrderId => "swapped_order_id",
        }
    }

    fn is_copy(self) -> bool {
        matches!(self, Kind::Copy | Kind::MutatedCopy | Kind::SwappedOrderId)
    }
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Shot {
    pub kind: Kind,
    /// The full topic path.
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
}

/// A real message seen on the bus.
#[derive(Debug, Clone)]
struct Seen {
    topic: String,
    payload: Vec<u8>,
}

/// What the fuzzer has seen of the shop's own traffic: the latest
/// messages, order ids and SKUs, to copy from.
#[derive(Debug, Default)]
pub struct Corpus {
    messages: VecDeque<Seen>,
    order_ids: VecDeque<String>,
    skus: Vec<String>,
    /// How many real messages were seen in all.
    pub seen: u64,
}

impl Corpus {
    /// Takes note of a real message.
    pub fn add(&mut self, topic: &str, payload: &[u8]) {
        self.seen += 1;
        if let Ok(v) = serde_json::from_slice::<Value>(payload) {
            if let Some(id) = v["order_id"].as_str() {
                if !self.order_ids.iter().any(|o| o == id) {
                    push_bounded(&mut self.order_ids, id.to_owned());
                }
            }
            for line in v["body"]["items"].as_array().into_iter().flatten() {
                if let Some(sku) = line["sku"].as_str() {
                    if self.skus.len() < KEEP_SEEN && !self.skus.iter().any(|s| s == sku) {
                        self.skus.push(sku.to_owned());
                    }
                }
            }
        }
        push_bounded(&mut self.messages, Seen { topic: topic.to_owned(), payload: payload.to_vec() });
    }

    fn pick_message(&self, rng: &mut StdRng) -> Option<&Seen> {
        pick_recent(&self.messages, rng)
    }
}

fn push_bounded<T>(q: &mut VecDeque<T>, item: T) {
    if q.len() == KEEP_SEEN {
        q.pop_front();
    }
    q.push_back(item);
}

/// Half of the time one of the latest [`RECENT`], else any.
fn pick_recent<'a, T>(q: &'a VecDeque<T>, rng: &mut StdRng) -> Option<&'a T> {
    if q.is_empty() {
        return None;
    }
    let i =
        if rng.gen_bool(0.5) { q.len() - 1 - rng.gen_range(0..q.len().min(RECENT)) } else { rng.gen_range(0..q.len()) };
    q.get(i)
}

/// Makes the messages: pure, seeded, no I/O.
///
/// Each message draws from a generator of its own, seeded with the run's
/// seed and its number, so what the bus carried (which copies pick from)
/// changes only the copies, never the kinds, topics and QoS of the
/// messages after them.
pub struct Generator {
    seed: u64,
    n: u64,
    rng: StdRng,
    prefix: String,
    max_bytes: usize,
}

impl Generator {
    pub fn new(seed: u64, prefix: &str, max_bytes: usize) -> Self {
        Self { seed, n: 0, rng: StdRng::seed_from_u64(seed), prefix: prefix.to_owned(), max_bytes }
    }

    /// The next message. A copy needs something seen in `corpus`; without
    /// it, an envelope cut short takes its place.
    pub fn next(&mut self, corpus: &Corpus) -> Shot {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&self.seed.to_le_bytes());
        seed[8..16].copy_from_slice(&self.n.to_le_bytes());
        self.rng = StdRng::from_seed(seed);
        self.n += 1;
        let mut kind = *Kind::ALL.choose(&mut self.rng).expect("kinds");
        if kind.is_copy() && corpus.messages.is_empty() {
            kind = Kind::TruncatedJson;
        }
        let qos = if self.rng.gen_bool(0.5) { QoS::AtLeastOnce } else { QoS::AtMostOnce };
        let (topic, mut payload) = self.make(kind, corpus);
        // Nothing beyond the configured maximum, whatever the kind.
        payload.truncate(self.max_bytes);
        Shot { kind, topic, payload, qos }
    }

    fn make(&mut self, kind: Kind, corpus: &Corpus) -> (String, Vec<u8>) {
        let topic = *Topic::ALL.choose(&mut self.rng).expect("topics");
        let path = topic.path(&self.prefix);
        let mut env = self.envelope(topic, corpus);
        match kind {
            Kind::Valid => {}
            Kind::RandomBytes => {
                let n = self.rng.gen_range(1..=512);
                return (path, self.bytes(n));
            }
            Kind::Empty => return (path, Vec::new()),
            Kind::TruncatedJson => {
                let whole = match corpus.pick_message(&mut self.rng) {
                    Some(seen) => return (seen.topic.clone(), self.cut(&seen.payload)),
                    None => to_vec(&env),
                };
                return (path, self.cut(&whole));
            }
            Kind::WrongBody => {
                let other = self.other_topic(topic);
                env["body"] = self.body(other, corpus);
            }
            Kind::WrongType => {
                let other = self.other_topic(topic).message_type();
                env["type"] = [json!(other), json!("order.sent"), json!(""), json!(42), Value::Null]
                    .choose(&mut self.rng)
                    .expect("types")
                    .clone();
            }
            Kind::BadMessageId => env["message_id"] = self.bad_id(),
            Kind::BadOrderId => env["order_id"] = self.bad_id(),
            Kind::WrongVersion => {
                env["v"] = [json!(0), json!(2), json!(99), json!(-1), json!("1"), json!(1.5), json!(u64::MAX)]
                    .choose(&mut self.rng)
                    .expect("versions")
                    .clone();
            }
            Kind::MissingField => {
                let body_fields: Vec<String> =
                    env["body"].as_object().map(|b| b.keys().cloned().collect()).unwrap_or_default();
                if !body_fields.is_empty() && self.rng.gen_bool(0.5) {
                    let f = body_fields.choose(&mut self.rng).expect("fields");
                    env["body"].as_object_mut().expect("body").remove(f);
                } else {
                    let f = ["message_id", "type", "v", "order_id", "sent_at", "body"]
                        .choose(&mut self.rng)
                        .expect("fields");
                    env.as_object_mut().expect("envelope").remove(*f);
                }
            }
            Kind::ExtraField => {
                let value = self.scalar();
                if self.rng.gen_bool(0.5) {
                    env["x_fuzz"] = value;
                } else if let Some(body) = env["body"].as_object_mut() {
                    body.insert("x_fuzz".into(), value);
                }
            }
            Kind::HugeNumber => {
                let huge = [
                    "18446744073709551616",
                    "-9223372036854775809",
                    "1e300",
                    "-1e300",
                    "340282366920938463463374607431768211456",
                    "0.000000000000000000001",
                ]
                .choose(&mut self.rng)
                .expect("numbers");
                // Numbers serde_json's Value can't hold are spliced in as text.
                let field = ["v", "quantity", "unit_price_cents", "version"].choose(&mut self.rng).expect("fields");
                let marker = "\"__huge__\"";
                match *field {
                    "v" => env["v"] = json!("__huge__"),
                    "quantity" | "unit_price_cents" => {
                        env = self.envelope(Topic::OrdersSend, corpus);
                        env["body"]["items"][0][*field] = json!("__huge__");
                        return (Topic::OrdersSend.path(&self.prefix), splice(&env, marker, huge));
                    }
                    _ => {
                        env = self.envelope(Topic::OrdersStatus, corpus);
                        env["body"]["version"] = json!("__huge__");
                        return (Topic::OrdersStatus.path(&self.prefix), splice(&env, marker, huge));
                    }
                }
                return (path, splice(&env, marker, huge));
            }
            Kind::BadQuantity => {
                env = self.envelope(Topic::OrdersSend, corpus);
                let q = [json!(0), json!(-1), json!(i64::MIN), json!(1001), json!(2.5), json!("3"), Value::Null]
                    .choose(&mut self.rng)
                    .expect("quantities")
                    .clone();
                env["body"]["items"][0]["quantity"] = q;
                return (Topic::OrdersSend.path(&self.prefix), to_vec(&env));
            }
            Kind::UnknownSku => {
                env = self.envelope(Topic::OrdersSend, corpus);
                let sku = match self.rng.gen_range(0..4) {
                    0 => json!(format!("NO-SUCH-{:08X}", self.rng.gen::<u32>())),
                    1 => json!("bad sku!"),
                    2 => json!(""),
                    _ => json!("A".repeat(41)),
                };
                env["body"]["items"][0]["sku"] = sku;
                return (Topic::OrdersSend.path(&self.prefix), to_vec(&env));
            }
            Kind::LongString => {
                let n = self.rng.gen_range(256..=self.max_bytes.clamp(257, 200_000));
                let long = json!("é".repeat(n / 2));
                match (topic, self.rng.gen_range(0..3)) {
                    (Topic::OrdersSend, 0) => {
                        env["body"]["customer_email"] = json!(format!("{}@example.com", "a".repeat(n)))
                    }
                    (Topic::OrdersSend, 1) => env["body"]["items"][0]["sku"] = json!("A".repeat(n)),
                    (_, 0) => env["type"] = long,
                    (_, 1) => env["traceparent"] = long,
                    _ => match env["body"].as_object_mut() {
                        Some(b) if !b.is_empty() => {
                            let f = b.keys().next().cloned().expect("a field");
                            b.insert(f, long);
                        }
                        _ => env["body"] = json!({ "reason": long }),
                    },
                }
            }
            Kind::NearLimit => {
                let target = (MAX_MESSAGE_BYTES as i64 + self.rng.gen_range(-64..=64)) as usize;
                return (path, pad(env, target.min(self.max_bytes)));
            }
            Kind::Large => {
                let low = (MAX_MESSAGE_BYTES + 1).min(self.max_bytes);
                let target = self.rng.gen_range(low..=self.max_bytes.max(low));
                if self.rng.gen_bool(0.5) {
                    return (path, pad(env, target));
                }
                return (path, self.bytes(target));
            }
            Kind::UnknownTopic => {
                let suffix = [
                    format!("{}x", topic.suffix()),
                    format!("{}/extra", topic.suffix()),
                    "orders".into(),
                    "inventory".into(),
                    format!("fuzz/{:08x}", self.rng.gen::<u32>()),
                    "ORDERS/SEND".into(),
                    "orders//send".into(),
                ]
                .choose(&mut self.rng)
                .expect("suffixes")
                .clone();
                return (format!("{}{suffix}", self.prefix), to_vec(&env));
            }
            Kind::Copy => {
                let seen = corpus.pick_message(&mut self.rng).expect("a seen message");
                return (seen.topic.clone(), seen.payload.clone());
            }
            Kind::MutatedCopy => {
                let seen = corpus.pick_message(&mut self.rng).expect("a seen message").clone();
                let Ok(mut v) = serde_json::from_slice::<Value>(&seen.payload) else {
                    return (seen.topic, self.cut(&seen.payload));
                };
                self.mutate_body(&mut v);
                return (seen.topic, to_vec(&v));
            }
            Kind::SwappedOrderId => {
                let seen = corpus.pick_message(&mut self.rng).expect("a seen message").clone();
                let Ok(mut v) = serde_json::from_slice::<Value>(&seen.payload) else {
                    return (seen.topic, self.cut(&seen.payload));
                };
                let own = v["order_id"].as_str().unwrap_or_default().to_owned();
                let other = pick_recent(&corpus.order_ids, &mut self.rng)
                    .filter(|o| **o != own)
                    .cloned()
                    .unwrap_or_else(|| self.uuid().to_string());
                v["order_id"] = json!(other);
                return (seen.topic, to_vec(&v));
            }
        }
        (path, to_vec(&env))
    }

    /// A well-formed envelope of `topic` about a fresh order.
    fn envelope(&mut self, topic: Topic, corpus: &Corpus) -> Value {
        let body = self.body(topic, corpus);
        let mut env = Envelope::new(topic, OrderId(self.uuid()), body);
        env.message_id = MessageId(self.uuid());
        serde_json::to_value(&env).expect("an envelope is JSON")
    }

    /// A valid body for `topic`. Orders name SKUs seen on the bus or
    /// unknown ones, one to three lines of a few units.
    fn body(&mut self, topic: Topic, corpus: &Corpus) -> Value {
        let fingerprint = format!("fuzz-{:016x}", self.rng.gen::<u64>());
        match topic {
            Topic::OrdersSend => {
                let lines = self.rng.gen_range(1..=3);
                let items: Vec<Value> = (0..lines)
                    .map(|_| {
                        let sku = self.sku(corpus);
                        json!({"sku": sku, "quantity": self.rng.gen_range(1..=3), "unit_price_cents": self.rng.gen_range(0..10_000)})
                    })
                    .collect();
                json!({"customer_email": "fuzz@example.com", "items": items, "currency": "EUR", "fingerprint": fingerprint})
            }
            Topic::OrdersCancel => json!({"reason": "fuzz"}),
            Topic::OrdersStatus => {
                let status = ["pending", "confirmed", "rejected", "cancelled"].choose(&mut self.rng).expect("statuses");
                json!({"status": status, "version": self.rng.gen_range(1..5), "fingerprint": fingerprint})
            }
            Topic::InStock => json!({ "fingerprint": fingerprint }),
            Topic::OutOfStock => json!({"fingerprint": fingerprint, "reason": "fuzz"}),
            Topic::OrdersCancelled | Topic::Released => json!({}),
            Topic::CartsCommand => match self.rng.gen_range(0..3) {
                0 => json!({"op": "create"}),
                1 => json!({"op": "set_item", "sku": self.sku(corpus), "quantity": self.rng.gen_range(0..=3)}),
                _ => json!({"op": "checkout", "version": self.rng.gen_range(1..5), "order_id": self.uuid(),
                            "customer_email": "fuzz@example.com", "currency": "EUR", "fingerprint": fingerprint,
                            "prices": [{"sku": self.sku(corpus), "unit_price_cents": self.rng.gen_range(0..10_000)}]}),
            },
            Topic::CartsStatus => json!({"command_id": self.uuid(), "refused": "unknown_cart"}),
            Topic::CartsHold => json!({"version": self.rng.gen_range(1..5),
                                       "lines": [{"sku": self.sku(corpus), "quantity": self.rng.gen_range(0..=3)}]}),
            Topic::Held => {
                json!({"seq": self.rng.gen_range(1..5), "version": self.rng.gen_range(1..5), "because": "hold",
                                  "lines": [{"sku": self.sku(corpus), "quantity": self.rng.gen_range(0..=3)}]})
            }
        }
    }

    /// A SKU the shop has (when the corpus saw one) or an unknown one; as
    /// many draws whatever was seen, so the choices after this one stay the
    /// same.
    fn sku(&mut self, corpus: &Corpus) -> String {
        let (known, pick) = (self.rng.gen_bool(0.5), self.rng.gen::<usize>());
        let unknown = format!("FUZZ-{:06X}", self.rng.gen_range(0..0xFF_FFFF));
        match corpus.skus.len() {
            n if known && n > 0 => corpus.skus[pick % n].clone(),
            _ => unknown,
        }
    }

    fn other_topic(&mut self, topic: Topic) -> Topic {
        let others: Vec<Topic> = Topic::ALL.into_iter().filter(|t| *t != topic).collect();
        *others.choose(&mut self.rng).expect("topics")
    }

    fn bad_id(&mut self) -> Value {
        [
            json!("not-a-uuid"),
            json!(""),
            json!(12345),
            Value::Null,
            json!({}),
            json!("00000000-0000-0000-0000-00000000000g"),
            json!("00000000-0000-0000-0000-000000000000"),
            json!(format!("{}-0", self.uuid())),
        ]
        .choose(&mut self.rng)
        .expect("ids")
        .clone()
    }

    fn scalar(&mut self) -> Value {
        match self.rng.gen_range(0..5) {
            0 => json!(self.rng.gen::<i64>()),
            1 => json!("fuzz"),
            2 => Value::Null,
            3 => json!([1, "two", {"three": 3}]),
            _ => json!({"nested": {"deeper": true}}),
        }
    }

    /// A changed body: emptied, a field replaced, or another status.
    fn mutate_body(&mut self, v: &mut Value) {
        match self.rng.gen_range(0..4) {
            0 => v["body"] = json!({}),
            1 => v["body"] = self.scalar(),
            2 => v["body"]["status"] = json!("confirmed"),
            _ => match v["body"].as_object_mut() {
                Some(b) if !b.is_empty() => {
                    let keys: Vec<String> = b.keys().cloned().collect();
                    let k = keys.choose(&mut self.rng).expect("a field").clone();
                    let value = self.scalar();
                    v["body"][k] = value;
                }
                _ => v["body"] = json!({"fingerprint": "mutated"}),
            },
        }
    }

    /// The first `n < len` bytes (at least one short).
    fn cut(&mut self, whole: &[u8]) -> Vec<u8> {
        if whole.len() < 2 {
            return Vec::new();
        }
        whole[..self.rng.gen_range(1..whole.len())].to_vec()
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        self.rng.fill(&mut buf[..]);
        buf
    }

    fn uuid(&mut self) -> uuid::Uuid {
        uuid::Builder::from_random_bytes(self.rng.gen()).into_uuid()
    }
}

fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a Value serializes")
}

/// `v` serialized, with the JSON string `marker` replaced by `raw` text.
fn splice(v: &Value, marker: &str, raw: &str) -> Vec<u8> {
    String::from_utf8(to_vec(v)).expect("JSON is UTF-8").replacen(marker, raw, 1).into_bytes()
}

/// `env` with an extra top-level string field that brings it to exactly
/// `target` bytes (or as close above as its own size allows).
fn pad(mut env: Value, target: usize) -> Vec<u8> {
    env["pad"] = json!("");
    let len = to_vec(&env).len();
    env["pad"] = json!("x".repeat(target.saturating_sub(len)));
    to_vec(&env)
}

fn hash(payload: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    payload.hash(&mut h);
    h.finish()
}

/// What a run published.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    /// The seed that repeats the run's choices.
    pub seed: u64,
    /// Messages per kind.
    pub sent: BTreeMap<Kind, u64>,
    pub qos0: u64,
    pub qos1: u64,
    /// QoS 1 messages the broker acknowledged.
    pub acked: u64,
    pub bytes: u64,
    pub largest: usize,
    /// Real messages seen on the bus (the pool copies come from).
    pub seen: u64,
}

impl Report {
    pub fn total(&self) -> u64 {
        self.sent.values().sum()
    }

    pub fn count(&self, kind: Kind) -> u64 {
        self.sent.get(&kind).copied().unwrap_or(0)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {}: sent {} message(s), {} bytes (largest {}): {} at QoS 0, {} at QoS 1 ({} acknowledged); {} real message(s) seen",
            self.seed,
            self.total(),
            self.bytes,
            self.largest,
            self.qos0,
            self.qos1,
            self.acked,
            self.seen
        )?;
        for (kind, n) in &self.sent {
            writeln!(f, "  {:<18} {n}", kind.name())?;
        }
        Ok(())
    }
}

/// Publishes until the duration or count is reached (or `shutdown`);
/// returns what was sent once the broker acknowledged every QoS 1 message.
pub async fn run(cfg: Fuzz, shutdown: CancellationToken) -> anyhow::Result<Report> {
    if cfg.duration.is_none() && cfg.count.is_none() {
        bail!("give a duration or a count");
    }
    if !(cfg.rate > 0.0 && cfg.rate.is_finite()) {
        bail!("the rate must be a positive number of messages per second");
    }
    let (client, mut eventloop) = super::mqtt::connect_as(&cfg.broker, "fuzz", cfg.credentials.clone()).await?;
    // The shop's own traffic, to copy from. QoS 0: a copy lost is no loss.
    client.subscribe(format!("{}#", cfg.prefix), QoS::AtMostOnce).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("lost the broker while subscribing: {e}"),
            Err(_) => bail!("the broker did not acknowledge the subscription within 5 s"),
        }
    }

    let corpus = Arc::new(Mutex::new(Corpus::default()));
    // Hashes of what we published: the subscription brings it back, and it
    // is not the shop's traffic. (std mutexes: never held across .await.)
    let own = Arc::new(Mutex::new(HashSet::<u64>::new()));
    let (acked_tx, mut acked_rx) = tokio::sync::watch::channel(0u64);
    let stop_loop = CancellationToken::new();
    let driver: tokio::task::JoinHandle<anyhow::Result<rumqttc::EventLoop>> = {
        let (corpus, own, stop) = (corpus.clone(), own.clone(), stop_loop.clone());
        tokio::spawn(async move {
            let mut acked = 0u64;
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return Ok(eventloop),
                    e = eventloop.poll() => e.context("connection to the broker lost")?,
                };
                match event {
                    Event::Incoming(Packet::Publish(p))
                        if !own.lock().expect("own lock").contains(&hash(&p.payload)) =>
                    {
                        corpus.lock().expect("corpus lock").add(&p.topic, &p.payload);
                    }
                    Event::Incoming(Packet::PubAck(_)) => {
                        acked += 1;
                        let _ = acked_tx.send(acked);
                    }
                    Event::Outgoing(Outgoing::Disconnect) => return Ok(eventloop),
                    _ => {}
                }
            }
        })
    };

    let mut generator = Generator::new(cfg.seed, &cfg.prefix, cfg.max_bytes);
    let mut report = Report { seed: cfg.seed, ..Default::default() };
    let interval = Duration::from_secs_f64(1.0 / cfg.rate);
    let start = tokio::time::Instant::now();
    let deadline = cfg.duration.map(|d| start + d);
    let mut next = start;
    loop {
        if cfg.count.is_some_and(|c| report.total() >= c) || deadline.is_some_and(|d| next >= d) {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {}
        }
        if driver.is_finished() {
            break;
        }
        next += interval;
        let shot = {
            let corpus = corpus.lock().expect("corpus lock");
            generator.next(&corpus)
        };
        own.lock().expect("own lock").insert(hash(&shot.payload));
        *report.sent.entry(shot.kind).or_default() += 1;
        match shot.qos {
            QoS::AtMostOnce => report.qos0 += 1,
            _ => report.qos1 += 1,
        }
        report.bytes += shot.payload.len() as u64;
        report.largest = report.largest.max(shot.payload.len());
        client.publish(shot.topic, shot.qos, false, shot.payload).await?;
    }

    let qos1 = report.qos1;
    let all_acked = tokio::time::timeout(Duration::from_secs(10), acked_rx.wait_for(|n| *n >= qos1)).await.is_ok();
    report.acked = *acked_rx.borrow();
    report.seen = corpus.lock().expect("corpus lock").seen;
    stop_loop.cancel();
    match driver.await? {
        Ok(mut eventloop) => {
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
        }
        Err(e) => return Err(e.context(format!("after {} message(s)", report.total()))),
    }
    if !all_acked {
        bail!("the broker acknowledged {} of {} QoS 1 messages within 10 s", report.acked, report.qos1);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use shared::message::Inbound;

    const PREFIX: &str = shared::topics::DEFAULT_PREFIX;

    fn corpus() -> Corpus {
        let mut c = Corpus::default();
        for i in 0..3 {
            let body = json!({"customer_email": "a@example.com", "currency": "EUR", "fingerprint": format!("f{i}"),
                              "items": [{"sku": "TENT-1", "quantity": 1, "unit_price_cents": 100}]});
            let env = Envelope::new(Topic::OrdersSend, OrderId(uuid::Uuid::new_v4()), body);
            c.add(&Topic::OrdersSend.path(PREFIX), &env.to_json());
        }
        c
    }

    fn shots(seed: u64, n: usize, corpus: &Corpus) -> Vec<Shot> {
        let mut g = Generator::new(seed, PREFIX, 200_000);
        (0..n).map(|_| g.next(corpus)).collect()
    }

    #[test]
    fn the_same_seed_makes_the_same_choices() {
        let c = corpus();
        let key = |s: &Shot| (s.kind, s.topic.clone(), s.qos, s.payload.len());
        let a: Vec<_> = shots(7, 300, &c).iter().map(key).collect();
        let b: Vec<_> = shots(7, 300, &c).iter().map(key).collect();
        let other: Vec<_> = shots(8, 300, &c).iter().map(key).collect();
        // Lengths vary with `sent_at`'s digits; kinds, topics and QoS don't.
        let strip = |v: &[(Kind, String, QoS, usize)]| v.iter().map(|k| (k.0, k.1.clone(), k.2)).collect::<Vec<_>>();
        assert_eq!(strip(&a), strip(&b));
        assert_ne!(strip(&a), strip(&other));
    }

    #[test]
    fn every_kind_comes_up_and_nothing_exceeds_the_maximum() {
        let c = corpus();
        let mut g = Generator::new(1, PREFIX, 100_000);
        let mut kinds = HashSet::new();
        let mut qos = HashSet::new();
        for _ in 0..3000 {
            let s = g.next(&c);
            assert!(s.payload.len() <= 100_000, "{:?}: {} bytes", s.kind, s.payload.len());
            assert!(s.topic.starts_with(PREFIX) && !s.topic.contains(['#', '+']), "{}", s.topic);
            kinds.insert(s.kind);
            qos.insert(format!("{:?}", s.qos));
        }
        assert_eq!(kinds.len(), Kind::ALL.len(), "{kinds:?}");
        assert_eq!(qos.len(), 2);
    }

    #[test]
    fn what_was_seen_changes_only_the_copies() {
        let (seen, nothing) = (corpus(), Corpus::default());
        let a = shots(5, 500, &seen);
        let b = shots(5, 500, &nothing);
        for (a, b) in a.iter().zip(&b) {
            assert_eq!(a.qos, b.qos);
            if a.kind.is_copy() {
                assert_eq!(b.kind, Kind::TruncatedJson);
            } else if a.kind == Kind::TruncatedJson {
                // Cut from a real message (on its topic) when there is one.
                assert_eq!(b.kind, Kind::TruncatedJson);
            } else {
                assert_eq!((a.kind, &a.topic), (b.kind, &b.topic));
            }
        }
    }

    #[test]
    fn without_traffic_seen_there_are_no_copies() {
        let c = Corpus::default();
        assert!(shots(3, 500, &c).iter().all(|s| !s.kind.is_copy()));
    }

    /// What the nodes must refuse at the envelope is refused there, and
    /// the near-limit messages sit on both sides of the limit.
    #[test]
    fn malformed_kinds_fail_to_decode_and_sizes_straddle_the_limit() {
        let c = corpus();
        let originals: Vec<Value> = c.messages.iter().map(|m| serde_json::from_slice(&m.payload).unwrap()).collect();
        let max = 200_000;
        let mut g = Generator::new(11, PREFIX, max);
        let (mut below, mut above, mut large) = (0, 0, 0);
        for _ in 0..2000 {
            let s = g.next(&c);
            let Some(topic) = Topic::from_path(PREFIX, &s.topic) else {
                assert!(matches!(s.kind, Kind::UnknownTopic), "{:?} on {}", s.kind, s.topic);
                continue;
            };
            let decoded = Inbound::decode(topic, Bytes::from(s.payload.clone()));
            match s.kind {
                Kind::Empty
                | Kind::TruncatedJson
                | Kind::WrongType
                | Kind::WrongVersion
                | Kind::BadMessageId
                | Kind::BadOrderId
                | Kind::Large => {
                    assert!(decoded.is_err(), "{:?} decoded", s.kind)
                }
                Kind::Valid => assert!(decoded.is_ok(), "{:?}", decoded.err()),
                Kind::NearLimit => {
                    assert!(s.payload.len().abs_diff(MAX_MESSAGE_BYTES) <= 64);
                    if s.payload.len() <= MAX_MESSAGE_BYTES {
                        below += 1;
                        assert!(decoded.is_ok(), "{:?}", decoded.err());
                    } else {
                        above += 1;
                        assert!(decoded.is_err());
                    }
                }
                Kind::Copy => assert!(decoded.is_ok()),
                Kind::MutatedCopy | Kind::SwappedOrderId => {
                    // The original's id: the inbox drops it.
                    let v: Value = serde_json::from_slice(&s.payload).unwrap();
                    assert!(originals.iter().any(|o| o["message_id"] == v["message_id"]));
                }
                _ => {}
            }
            if s.kind == Kind::Large {
                large += 1;
                assert!(s.payload.len() > MAX_MESSAGE_BYTES && s.payload.len() <= max);
            }
        }
        assert!(below > 0 && above > 0 && large > 0, "{below} {above} {large}");
    }
}
