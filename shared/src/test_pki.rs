//! A throwaway PKI for tests (feature `test-pki`): a self-signed CA and a
//! server certificate it signed for `localhost` and `127.0.0.1`, written as
//! PEM files into a temp dir that lives as long as the value.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

pub struct TestPki {
    pub dir: tempfile::TempDir,
    /// The CA certificate (what clients trust).
    pub ca: PathBuf,
    /// The CA's private key (a key that doesn't match `cert`).
    pub ca_key: PathBuf,
    /// The server certificate, signed by the CA.
    pub cert: PathBuf,
    /// The server certificate's private key.
    pub key: PathBuf,
}

impl TestPki {
    pub fn generate() -> TestPki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "webshop test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_key_pem = ca_key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");

        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("server params");
        params.distinguished_name.push(DnType::CommonName, "webshop test server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &ca).expect("server certificate");

        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, pem: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).expect("write PEM");
            path
        };
        TestPki {
            ca: write("ca.pem", &ca.pem()),
            ca_key: write("ca-key.pem", &ca_key_pem),
            cert: write("cert.pem", &cert.pem()),
            key: write("key.pem", &key.serialize_pem()),
            dir,
        }
    }
}
