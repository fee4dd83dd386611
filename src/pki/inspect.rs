//! `outpost cert inspect`: what a certificate file holds, in words.

use std::fmt::Write as _;
use std::path::Path;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::identity::{check_order, cn_of, parse_all, rfc3339, signed_by_root};
use super::{read_certs, PkiError};

/// The report, and whether everything checked out.
pub struct Report {
    pub text: String,
    pub ok: bool,
}

/// Describes every certificate of `path`; checks the chain order, and the
/// chain against `root` and the leaf against `key` when given.
pub fn inspect(path: &Path, root: Option<&Path>, key: Option<&Path>) -> Result<Report, PkiError> {
    let ders = read_certs(path)?;
    let certs = parse_all(path, &ders)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut out = String::new();
    let mut ok = true;
    for (i, c) in certs.iter().enumerate() {
        let _ = writeln!(
            out,
            "certificate {} of {}",
            i.saturating_add(1),
            certs.len()
        );
        let _ = writeln!(out, "  subject:  {}", c.subject());
        let _ = writeln!(out, "  issuer:   {}", c.issuer());
        let _ = writeln!(out, "  CN:       {}", cn_of(c));
        let _ = writeln!(out, "  serial:   {}", c.raw_serial_as_string());
        let (from, to) = (
            c.validity().not_before.timestamp(),
            c.validity().not_after.timestamp(),
        );
        let state = if to < now {
            ok = false;
            format!("EXPIRED {} day(s) ago", now.saturating_sub(to) / 86_400)
        } else if from > now {
            ok = false;
            "NOT YET VALID".to_string()
        } else {
            format!("{} day(s) left", to.saturating_sub(now) / 86_400)
        };
        let _ = writeln!(
            out,
            "  valid:    {} to {} ({state})",
            rfc3339(from),
            rfc3339(to)
        );
        let _ = writeln!(out, "  CA:       {}", if c.is_ca() { "yes" } else { "no" });
        let sans = sans(c);
        if !sans.is_empty() {
            let _ = writeln!(out, "  SANs:     {}", sans.join(", "));
        }
        let _ = writeln!(out, "  key:      {}", key_kind(c));
    }
    match check_order(path, &certs) {
        Ok(()) if certs.len() > 1 => {
            let _ = writeln!(
                out,
                "chain order: ok (each certificate is signed by the next)"
            );
        }
        Ok(()) => {}
        Err(e) => {
            ok = false;
            let _ = writeln!(out, "chain order: {e}");
        }
    }
    if let Some(root_path) = root {
        let root_ders = read_certs(root_path)?;
        let roots = parse_all(root_path, &root_ders)?;
        let last = certs.last();
        if last.is_some_and(|last| roots.iter().any(|r| signed_by_root(last, r))) {
            let _ = writeln!(out, "verified against {}: ok", root_path.display());
        } else {
            ok = false;
            let _ = writeln!(
                out,
                "verified against {}: FAILED (the last certificate, CN={}, is not signed by that root)",
                root_path.display(),
                last.map(cn_of).unwrap_or_default()
            );
        }
    }
    if let Some(key_path) = key {
        // PKCS#8, SEC1 or PKCS#1, as the uplink and the listener read it.
        let (der, _) = super::read_key(key_path)?;
        let matches = rustls::crypto::ring::sign::any_supported_type(&der)
            .ok()
            .zip(certs.first())
            .is_some_and(|(k, leaf)| {
                k.public_key()
                    .is_some_and(|spki| spki.as_ref() == leaf.public_key().raw)
            });
        ok &= matches;
        let _ = writeln!(
            out,
            "key {}: {}",
            key_path.display(),
            if matches {
                "matches certificate 1"
            } else {
                "does NOT match certificate 1"
            }
        );
    }
    Ok(Report { text: out, ok })
}

fn sans(c: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(ext)) = c.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => format!("DNS:{d}"),
            GeneralName::IPAddress(b) => match b.len() {
                4 => match <[u8; 4]>::try_from(*b) {
                    Ok(a) => format!("IP:{}", std::net::Ipv4Addr::from(a)),
                    Err(_) => "IP:?".into(),
                },
                16 => {
                    let a = <[u8; 16]>::try_from(*b).unwrap_or_default();
                    format!("IP:{}", std::net::Ipv6Addr::from(a))
                }
                _ => "IP:?".into(),
            },
            other => format!("{other}"),
        })
        .collect()
}

fn key_kind(c: &X509Certificate<'_>) -> String {
    use x509_parser::public_key::PublicKey;
    match c.public_key().parsed() {
        Ok(PublicKey::EC(p)) => format!("EC ({} bits)", p.key_size()),
        Ok(PublicKey::RSA(r)) => format!("RSA ({} bits)", r.key_size()),
        Ok(_) => "other".into(),
        Err(_) => "unreadable".into(),
    }
}

/// The CN of a DER certificate.
pub fn cn_of_der(der: &[u8]) -> Option<String> {
    let (_, c) = X509Certificate::from_der(der).ok()?;
    Some(cn_of(&c))
}
