//! The TLS files a connection names: the CA certificates it trusts and the
//! client certificate and key it authenticates with, read and checked
//! during validation.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The certificate and key a PostgreSQL connection authenticates with.
/// `Debug` shows the files, never the key.
#[derive(Clone)]
pub struct TlsClient {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub certs: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("certs", &self.certs.len())
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// Reads the certificate chain and the private key, and checks that
    /// they belong together; the message names the file that is wrong.
    pub fn read(cert_path: &Path, key_path: &Path) -> Result<TlsClient, String> {
        let certs = read_certificates("tls_cert_file", cert_path)?;
        // As libpq does: a key others may read is refused.
        let meta = std::fs::metadata(key_path)
            .map_err(|e| format!("tls_key_file {}: cannot read it ({e})", key_path.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode();
            if mode & 0o037 != 0 {
                return Err(format!(
                    "tls_key_file {}: group or others may access it (mode {:o}); \
                     chmod 600 it (or 640 with a group only crmsync's user is in)",
                    key_path.display(),
                    mode & 0o777
                ));
            }
        }
        let key_pem = std::fs::read(key_path)
            .map_err(|e| format!("tls_key_file {}: cannot read it ({e})", key_path.display()))?;
        // The parser's own error could quote the file; it is not repeated.
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
            format!(
                "tls_key_file {}: holds no PEM private key (expected a -----BEGIN \
                 PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY block, unencrypted)",
                key_path.display()
            )
        })?;
        let client = TlsClient {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            certs,
            key: Arc::new(key),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS ({e})"))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_client_auth_cert(client.certs.clone(), client.key.clone_key())
            .map_err(|e| {
                format!(
                    "tls_cert_file {} and tls_key_file {} do not make a usable client \
                     certificate ({e}); the key must be the certificate's own",
                    cert_path.display(),
                    key_path.display()
                )
            })?;
        Ok(client)
    }
}

/// The CA certificates a `require` connection trusts instead of the
/// system roots.
#[derive(Clone)]
pub struct TlsCa {
    /// The file as resolved against the config file's directory.
    pub path: PathBuf,
    pub certs: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for TlsCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCa")
            .field("path", &self.path)
            .field("certs", &self.certs.len())
            .finish()
    }
}

/// The PEM certificates of the file that config key `key` names; the
/// message names the key and says what is wrong with the file.
fn read_certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("{key} {}: cannot read it ({e})", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key} {}: not a PEM certificate file ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{key} {}: holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)",
            path.display()
        ));
    }
    Ok(certs)
}

impl TlsCa {
    /// Reads `path` as PEM certificates; the message says what is wrong
    /// with the file.
    pub fn read(path: &Path) -> Result<TlsCa, String> {
        let certs = read_certificates("tls_ca_file", path)?;
        let mut roots = rustls::RootCertStore::empty();
        let (_, bad) = roots.add_parsable_certificates(certs.iter().cloned());
        if bad > 0 {
            return Err(format!(
                "tls_ca_file {}: {bad} of its {} certificates cannot be used as a CA \
                 (not a valid X.509 certificate)",
                path.display(),
                certs.len()
            ));
        }
        Ok(TlsCa {
            path: path.to_path_buf(),
            certs,
        })
    }
}
