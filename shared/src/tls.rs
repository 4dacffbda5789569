//! TLS material from config, loaded once at start: the certificate a
//! server presents ([`server_config`]) and the roots a client trusts
//! ([`client_config`], [`bus_transport`]). Every error names the config key
//! and the file, so a bad setup stops the node at start, not at the first
//! connection.
//!
//! rustls runs with the ring provider, chosen explicitly so that another
//! crate enabling aws-lc-rs can't make the process-wide default ambiguous.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{BusConfig, TlsConfig};

pub use tokio_rustls::TlsAcceptor;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in the PEM file at `path` (config key `key`).
pub fn load_certs(key: &str, path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<_, _>>())
        .map_err(|e| anyhow::anyhow!("{key}: cannot read PEM certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        bail!("{key}: {} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)", path.display());
    }
    Ok(certs)
}

fn load_key(key: &str, path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    // The error text names the file and the PEM problem, never key bytes.
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| anyhow::anyhow!("{key}: cannot read a PEM private key from {}: {e}", path.display()))
}

/// The server side of TLS for `cfg` (config section `section`, e.g. `tls`);
/// `None` when TLS is off (neither path set).
pub fn server_config(section: &str, cfg: &TlsConfig) -> anyhow::Result<Option<Arc<ServerConfig>>> {
    let (cert_path, key_path) = match (&cfg.cert_path, &cfg.key_path) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => bail!("{section}.key_path must be set along with {section}.cert_path"),
        (None, Some(_)) => bail!("{section}.cert_path must be set along with {section}.key_path"),
    };
    let certs = load_certs(&format!("{section}.cert_path"), cert_path)?;
    let key = load_key(&format!("{section}.key_path"), key_path)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("rustls: no safe protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            anyhow::anyhow!(
                "{section}.cert_path and {section}.key_path ({}, {}) don't make a usable certificate: {e}",
                cert_path.display(),
                key_path.display()
            )
        })?;
    // ALPN offers http/1.1 only, the protocol the server is tuned for (the
    // header-read timeout is an HTTP/1 setting). As over plain TCP, hyper's
    // auto builder still takes HTTP/2 from a client that starts with it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// The acceptor that wraps accepted sockets of a server with `cfg`.
pub fn acceptor(section: &str, cfg: &TlsConfig) -> anyhow::Result<Option<TlsAcceptor>> {
    Ok(server_config(section, cfg)?.map(TlsAcceptor::from))
}

/// Roots to trust: exactly the CAs in `ca_path` (config key `key`) when
/// given, else the system's root certificates.
pub fn roots(key: &str, ca_path: Option<&Path>) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match ca_path {
        Some(path) => {
            for cert in load_certs(key, path)? {
                roots
                    .add(cert)
                    .map_err(|e| anyhow::anyhow!("{key}: {} holds an unusable CA certificate: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                bail!("no system root certificates found (install ca-certificates) and {key} is unset");
            }
        }
    }
    Ok(roots)
}

/// A TLS client trusting [`roots`].
pub fn client_config(key: &str, ca_path: Option<&Path>) -> anyhow::Result<Arc<ClientConfig>> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("rustls: no safe protocol versions")?
        .with_root_certificates(roots(key, ca_path)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The MQTT transport `cfg` asks for: TLS when [`BusConfig::uses_tls`].
pub fn bus_transport(cfg: &BusConfig) -> anyhow::Result<rumqttc::Transport> {
    if !cfg.uses_tls() {
        return Ok(rumqttc::Transport::Tcp);
    }
    let config = client_config("bus.ca_path", cfg.ca_path.as_deref())?;
    Ok(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(config)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pki::TestPki;

    fn cfg(cert: &Path, key: &Path) -> TlsConfig {
        TlsConfig { cert_path: Some(cert.into()), key_path: Some(key.into()) }
    }

    #[test]
    fn off_unless_configured() {
        assert!(server_config("tls", &TlsConfig::default()).unwrap().is_none());
        assert!(matches!(bus_transport(&BusConfig::default()).unwrap(), rumqttc::Transport::Tcp));
    }

    #[test]
    fn loads_a_certificate_and_a_ca() {
        let pki = TestPki::generate();
        assert!(server_config("tls", &cfg(&pki.cert, &pki.key)).unwrap().is_some());
        let bus = BusConfig { ca_path: Some(pki.ca.clone()), ..Default::default() };
        assert!(matches!(bus_transport(&bus).unwrap(), rumqttc::Transport::Tls(_)));
    }

    /// A bad TLS setup fails at start and names the key to fix.
    #[test]
    fn bad_files_name_the_key() {
        let pki = TestPki::generate();
        let missing = pki.dir.path().join("missing.pem");
        let garbage = pki.dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a pem file").unwrap();

        let err = |r: anyhow::Result<Option<Arc<ServerConfig>>>| format!("{:#}", r.unwrap_err());
        let e = err(server_config("tls", &cfg(&missing, &pki.key)));
        assert!(e.contains("tls.cert_path") && e.contains("missing.pem"), "{e}");
        let e = err(server_config("tls", &cfg(&garbage, &pki.key)));
        assert!(e.contains("tls.cert_path") && e.contains("no PEM certificate"), "{e}");
        let e = err(server_config("tls", &cfg(&pki.cert, &garbage)));
        assert!(e.contains("tls.key_path") && e.contains("garbage.pem"), "{e}");
        // A certificate with a key that isn't its own.
        let e = err(server_config("tls", &cfg(&pki.cert, &pki.ca_key)));
        assert!(e.contains("tls.cert_path and tls.key_path"), "{e}");
        let e = err(server_config("tls", &TlsConfig { cert_path: Some(pki.cert.clone()), key_path: None }));
        assert!(e.contains("tls.key_path must be set"), "{e}");

        let bus = BusConfig { ca_path: Some(garbage), ..Default::default() };
        let e = format!("{:#}", bus_transport(&bus).err().expect("refused"));
        assert!(e.contains("bus.ca_path"), "{e}");
    }

    #[test]
    fn key_errors_do_not_print_key_material() {
        let pki = TestPki::generate();
        let key_text = std::fs::read_to_string(&pki.key).unwrap();
        let body: String = key_text.lines().filter(|l| !l.starts_with("-----")).collect();
        // The server's key presented as a certificate: the error must not echo it.
        let e = format!("{:#}", server_config("tls", &cfg(&pki.key, &pki.key)).unwrap_err());
        assert!(!e.contains(&body[..32]), "{e}");
    }
}
