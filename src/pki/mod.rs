//! Certificates and keys: checking the identity outpost presents upstream,
//! and making keys and certificates for the field and the factory
//! (`outpost cert`).
//!
//! A TLS handshake that fails because of a bad client certificate says
//! little ("handshake failure", or the server just hangs up). So before a
//! sink ever connects, outpost checks its certificate chain and key itself
//! and says exactly what is wrong: the key belongs to another certificate,
//! the chain is out of order, the leaf has expired.
//!
//! - [`identity`]: load and check a chain and key;
//! - [`make`]: key generation, CSRs, CAs and issuing;
//! - [`inspect`]: a readable description of a certificate file.

pub mod cli;
pub mod identity;
pub mod inspect;
pub mod make;

use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} already exists; not overwriting it (remove it first)", .0.display())]
    Exists(PathBuf),
    #[error("{}: {detail}", path.display())]
    Pem { path: PathBuf, detail: String },
    #[error("{}: the private key does not belong to the first certificate (CN={cn}); the first certificate in the chain file must be the leaf made for this key", path.display())]
    KeyMismatch { path: PathBuf, cn: String },
    #[error("{}: certificate {index} (CN={cn}) is not signed by certificate {next} (CN={next_cn}): the chain must go leaf, intermediate(s), [root], each signed by the next", path.display(), next = index.saturating_add(1))]
    ChainOrder {
        path: PathBuf,
        index: usize,
        cn: String,
        next_cn: String,
    },
    #[error("{}: the certificate CN={cn} expired on {not_after} (renew it: outpost cert issue ...)", path.display())]
    Expired {
        path: PathBuf,
        cn: String,
        not_after: String,
    },
    #[error("{}: the certificate CN={cn} is not valid before {not_before} (is the clock right?)", path.display())]
    NotYetValid {
        path: PathBuf,
        cn: String,
        not_before: String,
    },
    #[error("{}: not signed by the root in {}", path.display(), root.display())]
    Untrusted { path: PathBuf, root: PathBuf },
    #[error("cannot make the certificate: {0}")]
    Make(String),
}

/// Reads every certificate of a PEM file (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let bytes = std::fs::read(path).map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| PkiError::Pem {
            path: path.to_path_buf(),
            detail: format!("not a PEM file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(PkiError::Pem {
            path: path.to_path_buf(),
            detail: "no PEM certificate (-----BEGIN CERTIFICATE-----) in the file".into(),
        });
    }
    Ok(certs)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<(PrivateKeyDer<'static>, String), PkiError> {
    let text = std::fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let key = rustls_pemfile::private_key(&mut text.as_bytes())
        .map_err(|e| PkiError::Pem {
            path: path.to_path_buf(),
            detail: format!("not a PEM file: {e}"),
        })?
        .ok_or_else(|| PkiError::Pem {
            path: path.to_path_buf(),
            detail: "no private key (-----BEGIN PRIVATE KEY-----) in the file".into(),
        })?;
    Ok((key, text))
}

/// Writes a file with the given mode, refusing to replace an existing one.
pub fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // `--out-dir pki` makes `pki` (and its parents) if they are missing.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                PkiError::Exists(path.to_path_buf())
            } else {
                PkiError::Write {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    f.write_all(contents.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|source| PkiError::Write {
            path: path.to_path_buf(),
            source,
        })
}
