//! TLS to PostgreSQL: one rustls connector type for every `tls` mode, the
//! mode carried by the connection config's `sslmode` and the certificate
//! verifier chosen by mode, plus the messages for TLS failures.
//!
//! - `disable`: plain; the connector is never used.
//! - `prefer`: TLS if the server offers it, plain otherwise, and the
//!   certificate is not verified (libpq's `sslmode=prefer`): this protects
//!   only against passive eavesdropping, not against an impostor.
//! - `require`: TLS or no connection, and the certificate chain and host
//!   name are verified against `tls_ca_file` or the system roots (libpq's
//!   `sslmode=verify-full`).

use crate::plan::{Connection, Tls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::error::Error as StdError;
use std::sync::Arc;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The connector type of every PostgreSQL connection, pooled or not.
pub type Connector = MakeRustlsConnect;

/// The `sslmode` that carries `tls` into tokio-postgres.
pub fn ssl_mode(tls: Tls) -> SslMode {
    match tls {
        Tls::Disable => SslMode::Disable,
        Tls::Prefer => SslMode::Prefer,
        Tls::Require => SslMode::Require,
    }
}

/// The connector for `conn`; the error says why no verifier could be built.
pub fn connector(conn: &Connection) -> Result<Connector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS ({e})"))?;
    let verified = match conn.tls {
        Tls::Disable | Tls::Prefer => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
        Tls::Require => builder.with_root_certificates(roots(conn)?),
    };
    let config = match &conn.tls_client {
        None => verified.with_no_client_auth(),
        Some(client) => verified
            .with_client_auth_cert(client.certs.clone(), client.key.clone_key())
            .map_err(|e| {
                format!(
                    "tls_cert_file {}: cannot use it ({e})",
                    client.cert_path.display()
                )
            })?,
    };
    Ok(MakeRustlsConnect::new(config))
}

/// `tls_ca_file`'s certificates, or else the system's trusted roots.
fn roots(conn: &Connection) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match &conn.tls_ca {
        Some(ca) => {
            roots.add_parsable_certificates(ca.certs.iter().cloned());
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                return Err(format!(
                    "tls = \"require\" found no system root certificates{why}; \
                     install the CA certificates package or set tls_ca_file"
                ));
            }
        }
    }
    Ok(roots)
}

/// What to do about a connection failure caused by TLS, or `None` when
/// the failure is not about TLS.
pub fn explain(conn: &Connection, e: &tokio_postgres::Error) -> Option<String> {
    let mut cause: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(c) = cause {
        if let Some(err) = rustls_error(c) {
            return Some(match err {
                rustls::Error::InvalidCertificate(why) => {
                    let trusted = match &conn.tls_ca {
                        Some(ca) => format!("the CA in tls_ca_file {}", ca.path.display()),
                        None => "the system's root certificates (no tls_ca_file is set)".into(),
                    };
                    let advice = if is_name_mismatch(why) {
                        "use a host name in the url that the certificate names, or have the \
                         server's certificate reissued for this name"
                    } else {
                        "set tls_ca_file to the PEM file of the CA that signed the server's \
                         certificate"
                    };
                    format!(
                        "the server's TLS certificate was rejected ({}); it was checked \
                         against {trusted}: {advice}",
                        certificate_problem(why)
                    )
                }
                rustls::Error::AlertReceived(
                    rustls::AlertDescription::BadCertificate
                    | rustls::AlertDescription::UnknownCA
                    | rustls::AlertDescription::CertificateUnknown
                    | rustls::AlertDescription::CertificateExpired
                    | rustls::AlertDescription::CertificateRevoked
                    | rustls::AlertDescription::AccessDenied,
                ) if conn.tls_client.is_some() => {
                    let file = conn
                        .tls_client
                        .as_ref()
                        .map(|c| c.cert_path.display().to_string())
                        .unwrap_or_default();
                    format!(
                        "the server refused the client certificate in tls_cert_file {file} \
                         ({err}); it must be signed by a CA in the server's ssl_ca_file and \
                         not be expired"
                    )
                }
                other => format!("the TLS handshake failed ({other})"),
            });
        }
        // tokio-postgres reports a plain server that way; it has no error
        // kind to match on.
        if conn.tls == Tls::Require && c.to_string() == "server does not support TLS" {
            return Some(
                "the server does not offer TLS, and tls = \"require\": enable ssl on the \
                 server, or set tls = \"prefer\" or \"disable\" on a trusted network"
                    .into(),
            );
        }
        cause = c.source();
    }
    None
}

/// rustls errors reach us wrapped in an `io::Error`, whose `source()`
/// skips the wrapped error itself.
fn rustls_error<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    e.downcast_ref::<rustls::Error>().or_else(|| {
        e.downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    })
}

fn is_name_mismatch(e: &rustls::CertificateError) -> bool {
    matches!(
        e,
        rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. }
    )
}

fn certificate_problem(e: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match e {
        C::UnknownIssuer => "signed by an unknown certificate authority".into(),
        C::BadSignature => "bad signature".into(),
        C::Expired | C::ExpiredContext { .. } => "expired".into(),
        C::NotValidYet | C::NotValidYetContext { .. } => "not valid yet".into(),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "it does not name the host in the url".into()
        }
        C::Revoked => "revoked".into(),
        other => format!("{other:?}"),
    }
}

/// Accepts any server certificate but still checks the handshake
/// signatures, for `prefer`: encryption without authentication.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
