//! MQTT over TLS for the embedded broker: our own TLS listener on `listen`
//! that relays each connection, once its handshake is done, to rumqttd on
//! a loopback port.
//!
//! Why not rumqttd's own `tls` setting (feature `use-rustls`): rumqttd
//! 0.20 runs the TLS handshake inline in its accept loop with no timeout,
//! so one client that connects and sends nothing stops the broker from
//! accepting anyone else, and it reads the certificate files again for
//! every connection. Here each handshake runs in its own task, bounded by
//! [`HANDSHAKE_TIMEOUT`], and the certificate is loaded once at start
//! (a bad file fails the start, naming the key).
//!
//! The cost: one more hop on the loopback interface, and rumqttd sees
//! every TLS client as coming from 127.0.0.1 (in its logs only; users and
//! passwords are checked by rumqttd as before).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves TLS on `listener` (already bound, so the port can't be lost),
/// relaying to the plain MQTT listener at `upstream`, on a thread of its
/// own until the process exits (like rumqttd itself).
pub fn spawn(
    listener: std::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    upstream: SocketAddr,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true).context("MQTT TLS listener: set_nonblocking")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the MQTT TLS listener's runtime")?;
    std::thread::Builder::new()
        .name("mqtt-tls".into())
        .spawn(move || runtime.block_on(accept_loop(listener, TlsAcceptor::from(config), upstream)))
        .context("cannot spawn the MQTT TLS listener thread")?;
    Ok(())
}

async fn accept_loop(listener: std::net::TcpListener, acceptor: TlsAcceptor, upstream: SocketAddr) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "MQTT TLS listener failed; no TLS clients can connect");
            return;
        }
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off, don't spin.
                tracing::warn!(error = %e, "MQTT TLS accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Err(e) = relay(acceptor, stream, upstream).await {
                tracing::debug!(%peer, error = %e, "MQTT TLS connection ended");
            }
        });
    }
}

async fn relay(acceptor: TlsAcceptor, stream: TcpStream, upstream: SocketAddr) -> std::io::Result<()> {
    // Nagle's algorithm would hold small MQTT packets on both hops.
    stream.set_nodelay(true)?;
    let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    let mut plain = TcpStream::connect(upstream).await?;
    plain.set_nodelay(true)?;
    tokio::io::copy_bidirectional(&mut tls, &mut plain).await?;
    Ok(())
}
