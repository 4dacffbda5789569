//! The load generator's HTTP/1.1 client: hyper's connection API directly.
//! A request takes an idle kept-alive connection (or opens one) and gives
//! it back once its response is read, so each closed-loop client ends up
//! with a connection of its own. reqwest did the same through its pool,
//! URL parsing and header merging at about twice the CPU per request, and
//! the load generator shares the machine with the shop it measures.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Longest a request may take, connecting included.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Longest an idle connection may take to be ready for the next request.
const READY: Duration = Duration::from_secs(1);

/// Why a request got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Connect,
    Timeout,
    Transport,
}

impl Failure {
    /// The error kind the recorder counts.
    pub fn kind(self) -> String {
        match self {
            Failure::Connect => "connect error",
            Failure::Timeout => "client timeout",
            Failure::Transport => "transport error",
        }
        .into()
    }
}

/// A response, read in full.
pub struct Response {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Kept-alive connections to one `http://host:port`.
pub struct Http {
    /// `host:port`, to connect to and to send as `Host`.
    authority: String,
    host: HeaderValue,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl Http {
    /// A client for the server at `base` (`http://host:port`, no path).
    pub fn new(base: &str) -> anyhow::Result<Http> {
        let uri: hyper::Uri = base.parse().map_err(|e| anyhow::anyhow!("the front URL `{base}`: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => anyhow::bail!(
                "the front URL `{base}`: the load generator speaks plain HTTP, not {other}; \
                 benchmark the front on an http:// listener"
            ),
            None => anyhow::bail!("the front URL `{base}` needs a scheme (http://)"),
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            anyhow::bail!("the front URL `{base}` must not have a path");
        }
        let authority = uri.authority().ok_or_else(|| anyhow::anyhow!("the front URL `{base}` has no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let authority = format!("{}:{port}", authority.host());
        Ok(Http { host: HeaderValue::from_str(&authority)?, authority, idle: Mutex::new(Vec::new()) })
    }

    /// Sends `method path` with `headers` and `body`; the response in full.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&'static str, &str)],
        body: Bytes,
    ) -> Result<Response, Failure> {
        let mut req = Request::builder().method(method).uri(path).header(HOST, self.host.clone());
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Full::new(body)).map_err(|_| Failure::Transport)?;
        tokio::time::timeout(TIMEOUT, self.exchange(req)).await.unwrap_or(Err(Failure::Timeout))
    }

    async fn exchange(&self, mut req: Request<Full<Bytes>>) -> Result<Response, Failure> {
        let (conn, resp) = match self.pooled().await {
            // A connection the server closed just now gives the request
            // back unsent: it goes out again on a fresh connection.
            Some(mut conn) => match conn.try_send_request(req).await {
                Ok(resp) => (conn, resp),
                Err(mut e) => {
                    req = e.take_message().ok_or(Failure::Transport)?;
                    let mut conn = self.connect().await?;
                    let resp = conn.send_request(req).await.map_err(|_| Failure::Transport)?;
                    (conn, resp)
                }
            },
            None => {
                let mut conn = self.connect().await?;
                let resp = conn.send_request(req).await.map_err(|_| Failure::Transport)?;
                (conn, resp)
            }
        };
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|_| Failure::Transport)?.to_bytes();
        // Read to its end: the connection can take the next request once
        // its dispatcher has seen that (`pooled` waits for it then, so this
        // response is not charged for it).
        if !conn.is_closed() {
            self.idle.lock().expect("idle connections lock").push(conn);
        }
        Ok(Response { status, body })
    }

    /// An idle connection ready for a request, if there is one; closed
    /// ones are dropped.
    async fn pooled(&self) -> Option<SendRequest<Full<Bytes>>> {
        loop {
            let mut conn = self.idle.lock().expect("idle connections lock").pop()?;
            if let Ok(Ok(())) = tokio::time::timeout(READY, conn.ready()).await {
                return Some(conn);
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Failure> {
        let stream = TcpStream::connect(&self.authority).await.map_err(|_| Failure::Connect)?;
        stream.set_nodelay(true).map_err(|_| Failure::Connect)?;
        let (send, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(|_| Failure::Connect)?;
        tokio::spawn(async move {
            // Ends when the connection closes; a request on it sees why.
            let _ = conn.await;
        });
        Ok(send)
    }
}
