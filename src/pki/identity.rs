//! The identity a sink presents: a certificate chain and its private key,
//! checked before the first connection.

use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::{read_certs, read_key, PkiError};

/// What a checked chain says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The leaf's common name (ThingsBoard derives the device name from it).
    pub cn: String,
    pub issuer_cn: String,
    /// RFC 3339.
    pub not_after: String,
    /// Whole days until the leaf expires.
    pub days_left: i64,
    pub chain_len: usize,
}

/// A checked identity, ready for rustls.
pub struct Checked {
    pub identity: Identity,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// Checks that `key` belongs to the first certificate of `chain`, that each
/// certificate is signed by the next, and that the leaf is valid now.
pub fn check(chain_path: &Path, key_path: &Path) -> Result<Checked, PkiError> {
    check_at(chain_path, key_path, time::OffsetDateTime::now_utc())
}

pub fn check_at(
    chain_path: &Path,
    key_path: &Path,
    now: time::OffsetDateTime,
) -> Result<Checked, PkiError> {
    let chain = read_certs(chain_path)?;
    let (key, _) = read_key(key_path)?;
    let parsed = parse_all(chain_path, &chain)?;
    let Some(leaf) = parsed.first() else {
        return Err(PkiError::Pem {
            path: chain_path.to_path_buf(),
            detail: "no certificate in the file".into(),
        });
    };
    let cn = cn_of(leaf);

    // rustls reads PKCS#8, SEC1 (`BEGIN EC PRIVATE KEY`, as `openssl
    // ecparam -genkey` writes it) and PKCS#1 (`BEGIN RSA PRIVATE KEY`); the
    // key must be one it can sign with, and the leaf's.
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| PkiError::Pem {
        path: key_path.to_path_buf(),
        detail: format!(
            "unusable private key ({e}); outpost takes ECDSA P-256/P-384, RSA and Ed25519 keys in PKCS#8, SEC1 or PKCS#1 PEM"
        ),
    })?;
    let matches = signer
        .public_key()
        .is_some_and(|spki| spki.as_ref() == leaf.public_key().raw);
    if !matches {
        return Err(PkiError::KeyMismatch {
            path: chain_path.to_path_buf(),
            cn,
        });
    }
    check_order(chain_path, &parsed)?;

    let validity = leaf.validity();
    if validity.not_after.timestamp() < now.unix_timestamp() {
        return Err(PkiError::Expired {
            path: chain_path.to_path_buf(),
            cn,
            not_after: rfc3339(validity.not_after.timestamp()),
        });
    }
    if validity.not_before.timestamp() > now.unix_timestamp() {
        return Err(PkiError::NotYetValid {
            path: chain_path.to_path_buf(),
            cn,
            not_before: rfc3339(validity.not_before.timestamp()),
        });
    }
    let identity = Identity {
        issuer_cn: name_cn(leaf.issuer()),
        not_after: rfc3339(validity.not_after.timestamp()),
        days_left: validity
            .not_after
            .timestamp()
            .saturating_sub(now.unix_timestamp())
            / 86_400,
        chain_len: parsed.len(),
        cn,
    };
    Ok(Checked {
        identity,
        chain,
        key,
    })
}

pub(crate) fn parse_all<'a>(
    path: &Path,
    ders: &'a [CertificateDer<'static>],
) -> Result<Vec<X509Certificate<'a>>, PkiError> {
    ders.iter()
        .enumerate()
        .map(|(i, der)| {
            X509Certificate::from_der(der.as_ref())
                .map(|(_, c)| c)
                .map_err(|e| PkiError::Pem {
                    path: path.to_path_buf(),
                    detail: format!(
                        "certificate {} is not valid X.509: {e}",
                        i.saturating_add(1)
                    ),
                })
        })
        .collect()
}

/// Each certificate is signed by the next one (1-based in messages).
pub(crate) fn check_order(path: &Path, certs: &[X509Certificate<'_>]) -> Result<(), PkiError> {
    for (i, pair) in certs.windows(2).enumerate() {
        let [cert, next] = pair else { continue };
        if cert.issuer() != next.subject()
            || cert.verify_signature(Some(next.public_key())).is_err()
        {
            return Err(PkiError::ChainOrder {
                path: path.to_path_buf(),
                index: i.saturating_add(1),
                cn: cn_of(cert),
                next_cn: cn_of(next),
            });
        }
    }
    Ok(())
}

/// Is the last certificate of the chain the root, or signed by it?
pub(crate) fn signed_by_root(last: &X509Certificate<'_>, root: &X509Certificate<'_>) -> bool {
    if last.tbs_certificate.as_ref() == root.tbs_certificate.as_ref() {
        return true;
    }
    last.issuer() == root.subject() && last.verify_signature(Some(root.public_key())).is_ok()
}

pub fn cn_of(cert: &X509Certificate<'_>) -> String {
    name_cn(cert.subject())
}

fn name_cn(name: &x509_parser::x509::X509Name<'_>) -> String {
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("(none)")
        .to_string()
}

pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}
