//! The `redis.tls` section: which certificate authorities herald trusts for Redis, and the
//! client certificate of mutual TLS, read and checked before anything starts.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::walk::{Section, Walk};

/// The TLS settings of every Redis connection (`rediss://` and its Sentinel and cluster forms).
#[derive(Clone)]
pub struct RedisTls {
    pub client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisTls")
    }
}

/// Reads `redis.tls` for a TLS URL; refuses the section when the URL is not one.
pub(super) fn read_tls(walk: &mut Walk, s: &Section<'_>, url_is_tls: bool) -> Option<RedisTls> {
    let raw = s.raw("tls");
    let files = walk.section(raw, &s.path("tls"), |walk, t| {
        let ca: Option<PathBuf> = walk.opt(t, "ca_file");
        let cert: Option<PathBuf> = walk.opt(t, "cert_file");
        let key: Option<PathBuf> = walk.opt(t, "key_file");
        (t.path("ca_file"), ca, t.path("cert_file"), cert, t.path("key_file"), key)
    });
    let (ca_path, ca, cert_path, cert, key_path, key) = files;
    if !url_is_tls {
        if raw.is_some() {
            walk.error(s.path("tls"), "is set, but redis.url does not use TLS: use rediss://, rediss-sentinel:// or rediss-cluster://");
        }
        return None;
    }
    let mut roots = rustls::RootCertStore::empty();
    match &ca {
        Some(file) => match CertificateDer::pem_file_iter(file).and_then(|certs| certs.collect::<Result<Vec<_>, _>>()) {
            Ok(certs) if certs.is_empty() => walk.error(ca_path, format!("{}: no PEM certificate in it", file.display())),
            Ok(certs) => {
                for cert in certs {
                    if let Err(e) = roots.add(cert) {
                        walk.error(ca_path.clone(), format!("{}: not a usable CA certificate: {e}", file.display()));
                    }
                }
            }
            Err(e) => walk.error(ca_path, format!("{}: cannot read PEM certificates: {e}", file.display())),
        },
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                walk.error(ca_path, "no system root certificates were found: name the CA bundle that signed Redis's certificate");
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default protocol versions")
        .with_root_certificates(roots);
    let client = match (&cert, &key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert).and_then(|certs| certs.collect::<Result<Vec<_>, _>>());
            let chain = match chain {
                Ok(chain) if !chain.is_empty() => chain,
                Ok(_) => {
                    walk.error(cert_path, format!("{}: no PEM certificate in it", cert.display()));
                    return None;
                }
                Err(e) => {
                    walk.error(cert_path, format!("{}: cannot read PEM certificates: {e}", cert.display()));
                    return None;
                }
            };
            let key_der = match PrivateKeyDer::from_pem_file(key) {
                Ok(k) => k,
                Err(e) => {
                    walk.error(key_path, format!("{}: cannot read a PEM private key: {e}", key.display()));
                    return None;
                }
            };
            match builder.with_client_auth_cert(chain, key_der) {
                Ok(c) => c,
                Err(e) => {
                    walk.error(key_path, format!("does not go with redis.tls.cert_file: {e}"));
                    return None;
                }
            }
        }
        (Some(_), None) => {
            walk.error(key_path, "is needed with redis.tls.cert_file (mutual TLS takes both)");
            return None;
        }
        (None, Some(_)) => {
            walk.error(cert_path, "is needed with redis.tls.key_file (mutual TLS takes both)");
            return None;
        }
    };
    Some(RedisTls { client: Arc::new(client) })
}
