//! `outpost cert ...`: the subcommands, on top of [`super::make`] and
//! [`super::inspect`].

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::make::{self, KeyKind, Spec, Subject};
use super::{write_new, PkiError};

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Make a private key (EC P-256 unless --rsa), written 0600.
    Keygen {
        /// Where to write the key (PEM, PKCS#8); never overwritten.
        #[arg(long, short)]
        out: PathBuf,
        /// An RSA key instead of EC P-256.
        #[arg(long)]
        rsa: bool,
        /// RSA key size: 2048, 3072 or 4096.
        #[arg(long, default_value_t = 2048)]
        bits: usize,
    },
    /// Make a certificate signing request for a key.
    Csr {
        /// The key to make the request for (PEM).
        #[arg(long)]
        key: PathBuf,
        /// The subject's common name (the device name on ThingsBoard).
        #[arg(long)]
        cn: String,
        /// A subject alternative name (DNS name or IP address); repeatable.
        #[arg(long)]
        san: Vec<String>,
        /// Where to write the CSR; standard output without it.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Make a self-signed root CA: a key and a certificate.
    Ca {
        /// The CA's common name (e.g. "Site Root").
        #[arg(long)]
        cn: String,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 3650)]
        days: i64,
        /// Writes DIR/NAME.pem and DIR/NAME.key (NAME: the CN, made
        /// file-safe); DIR is made if missing.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
    },
    /// Sign a certificate with a CA: for a device, a local sensor, the local
    /// listener, or (--intermediate) a CA below it. Writes DIR/NAME.pem, the
    /// key DIR/NAME.key when outpost made it, and DIR/chain.pem (the new
    /// certificate followed by every certificate in --ca-cert).
    Issue {
        /// The signing CA's certificate (intermediate first; it may be
        /// followed by the certificates above it).
        #[arg(long)]
        ca_cert: PathBuf,
        /// The signing CA's private key.
        #[arg(long)]
        ca_key: PathBuf,
        /// The new certificate's common name (the device name on ThingsBoard).
        #[arg(long)]
        cn: String,
        /// Days the certificate is valid (see --not-after).
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// End the validity at this date (YYYY-MM-DD) instead of --days.
        #[arg(long)]
        not_after: Option<String>,
        /// Subject alternative name (DNS name or IP address); repeatable.
        #[arg(long)]
        san: Vec<String>,
        /// Certify this existing key instead of making one.
        #[arg(long, conflicts_with = "csr")]
        key: Option<PathBuf>,
        /// Certify the key of this CSR instead of making one.
        #[arg(long)]
        csr: Option<PathBuf>,
        /// Make an intermediate CA (allowed to sign leaves only).
        #[arg(long)]
        intermediate: bool,
        /// A new key is RSA instead of EC P-256.
        #[arg(long)]
        rsa: bool,
        /// The directory to write to (made if missing).
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
    },
    /// Describe a certificate file: subject, issuer, validity, CN, chain
    /// order; and check it against a root and a key. Exit 1 on a problem.
    Inspect {
        /// The certificate or chain file (PEM) to describe.
        file: PathBuf,
        /// Verify the chain's last certificate against this root.
        #[arg(long)]
        root: Option<PathBuf>,
        /// Check that this private key belongs to the first certificate.
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

/// Runs one subcommand; `Ok(false)` means "ran, but found a problem".
pub fn run(cmd: CertCommand) -> Result<bool, PkiError> {
    match cmd {
        CertCommand::Keygen { out, rsa, bits } => {
            let kind = if rsa {
                KeyKind::Rsa(bits)
            } else {
                KeyKind::EcP256
            };
            write_new(&out, &make::keygen(kind)?, 0o600)?;
            println!("wrote {} ({})", out.display(), describe(kind));
        }
        CertCommand::Csr { key, cn, san, out } => {
            let pem = make::csr(&read(&key)?, &cn, &san)?;
            match out {
                Some(path) => {
                    write_new(&path, &pem, 0o644)?;
                    println!("wrote {}", path.display());
                }
                None => print!("{pem}"),
            }
        }
        CertCommand::Ca { cn, days, out_dir } => {
            let name = file_name(&cn);
            let key = make::keygen(KeyKind::EcP256)?;
            let spec = Spec {
                cn,
                sans: vec![],
                days,
                not_after: None,
                ca: Some(None),
            };
            let cert = make::self_signed(&key, &spec)?;
            let (cert_path, key_path) = (
                out_dir.join(format!("{name}.pem")),
                out_dir.join(format!("{name}.key")),
            );
            write_new(&key_path, &key, 0o600)?;
            write_new(&cert_path, &cert, 0o644)?;
            println!("wrote {} and {}", cert_path.display(), key_path.display());
        }
        CertCommand::Issue {
            ca_cert,
            ca_key,
            cn,
            days,
            not_after,
            san,
            key,
            csr,
            intermediate,
            rsa,
            out_dir,
        } => {
            let ca_pem = read(&ca_cert)?;
            let name = file_name(&cn);
            let not_after = not_after.map(|d| parse_date(&d)).transpose()?;
            let spec = Spec {
                cn,
                sans: san,
                days,
                not_after,
                ca: intermediate.then_some(Some(0)),
            };
            let (subject_text, made) = match (&key, &csr) {
                (Some(k), _) => (read(k)?, false),
                (None, Some(c)) => (read(c)?, false),
                (None, None) => {
                    let kind = if rsa {
                        KeyKind::Rsa(2048)
                    } else {
                        KeyKind::EcP256
                    };
                    (make::keygen(kind)?, true)
                }
            };
            let subject = if csr.is_some() {
                Subject::Csr(&subject_text)
            } else {
                Subject::Key(&subject_text)
            };
            let cert = make::issue(&ca_pem, &read(&ca_key)?, subject, &spec)?;
            let leaf_path = out_dir.join(format!("{name}.pem"));
            let chain_path = out_dir.join("chain.pem");
            if made {
                let key_path = out_dir.join(format!("{name}.key"));
                write_new(&key_path, &subject_text, 0o600)?;
                println!("wrote {}", key_path.display());
            }
            write_new(&leaf_path, &cert, 0o644)?;
            write_new(
                &chain_path,
                &format!("{cert}{}", make::pem_certs(&ca_pem)),
                0o644,
            )?;
            println!("wrote {} and {}", leaf_path.display(), chain_path.display());
        }
        CertCommand::Inspect { file, root, key } => {
            let report = super::inspect::inspect(&file, root.as_deref(), key.as_deref())?;
            print!("{}", report.text);
            return Ok(report.ok);
        }
    }
    Ok(true)
}

fn describe(kind: KeyKind) -> String {
    match kind {
        KeyKind::EcP256 => "EC P-256".into(),
        KeyKind::Rsa(bits) => format!("RSA {bits}"),
    }
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A CN as a file name: letters, digits, `-`, `_`, `.`; the rest `_`.
fn file_name(cn: &str) -> String {
    let s: String = cn
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("cert{s}")
    } else {
        s
    }
}

fn parse_date(s: &str) -> Result<time::OffsetDateTime, PkiError> {
    let bad = || PkiError::Make(format!("--not-after {s}: expected a date YYYY-MM-DD"));
    let mut parts = s.split('-');
    let (Some(y), Some(m), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let year: i32 = y.parse().map_err(|_| bad())?;
    let month: u8 = m.parse().map_err(|_| bad())?;
    let day: u8 = d.parse().map_err(|_| bad())?;
    let month = time::Month::try_from(month).map_err(|_| bad())?;
    time::Date::from_calendar_date(year, month, day)
        .map(|d| d.midnight().assume_utc())
        .map_err(|_| bad())
}
