//! Making keys, requests and certificates: what a technician needs in the
//! field (a key and a CSR for the platform's CA) and a factory or a site
//! needs to run its own small CA (root → intermediate → device leaves).

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::PkiError;

/// Which key to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on P-256: small, fast, what every platform accepts.
    EcP256,
    /// RSA of this many bits (2048, 3072 or 4096).
    Rsa(usize),
}

/// A new private key, as PKCS#8 PEM.
pub fn keygen(kind: KeyKind) -> Result<String, PkiError> {
    match kind {
        KeyKind::EcP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map(|k| k.serialize_pem())
            .map_err(|e| PkiError::Make(e.to_string())),
        KeyKind::Rsa(bits) => {
            if ![2048, 3072, 4096].contains(&bits) {
                return Err(PkiError::Make(format!(
                    "RSA keys are 2048, 3072 or 4096 bits, not {bits}"
                )));
            }
            use rsa::pkcs8::EncodePrivateKey;
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
                .map_err(|e| PkiError::Make(format!("RSA key generation failed: {e}")))?;
            key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
                .map(|pem| pem.to_string())
                .map_err(|e| PkiError::Make(e.to_string()))
        }
    }
}

fn key_pair(pem: &str) -> Result<KeyPair, PkiError> {
    KeyPair::from_pem(pem).map_err(|e| PkiError::Make(format!("unusable private key: {e}")))
}

/// Validity, names and uses of a certificate to make.
#[derive(Debug, Clone)]
pub struct Spec {
    pub cn: String,
    /// Subject alternative names: DNS names or IP addresses.
    pub sans: Vec<String>,
    pub days: i64,
    /// Overrides `days`: the certificate ends at this time.
    pub not_after: Option<OffsetDateTime>,
    /// A CA (`Some(None)`: unconstrained root; `Some(Some(n))`: at most n
    /// CAs below it).
    pub ca: Option<Option<u8>>,
}

impl Spec {
    fn params(&self) -> Result<CertificateParams, PkiError> {
        let mut p = CertificateParams::new(self.sans.clone())
            .map_err(|e| PkiError::Make(format!("bad subject alternative name: {e}")))?;
        p.distinguished_name
            .push(DnType::CommonName, self.cn.clone());
        let now = OffsetDateTime::now_utc();
        let later = self
            .days
            .checked_mul(86_400)
            .map(Duration::seconds)
            .and_then(|d| now.checked_add(d))
            .ok_or_else(|| {
                PkiError::Make(format!(
                    "{} days from now is past any date a certificate can hold",
                    self.days
                ))
            })?;
        let not_after = self.not_after.unwrap_or(later);
        p.not_after = not_after;
        let five_minutes_ago = now.checked_sub(Duration::minutes(5)).unwrap_or(now);
        let day_before_end = not_after
            .checked_sub(Duration::days(1))
            .unwrap_or(not_after);
        p.not_before = five_minutes_ago.min(day_before_end);
        let mut serial = [0u8; 16];
        for b in serial.iter_mut() {
            *b = fastrand::u8(..);
        }
        serial[0] &= 0x7f;
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        match self.ca {
            Some(path_len) => {
                p.is_ca = IsCa::Ca(match path_len {
                    None => BasicConstraints::Unconstrained,
                    Some(n) => BasicConstraints::Constrained(n),
                });
                p.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
            }
            None => {
                p.is_ca = IsCa::ExplicitNoCa;
                p.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyEncipherment,
                ];
                p.extended_key_usages = vec![
                    ExtendedKeyUsagePurpose::ClientAuth,
                    ExtendedKeyUsagePurpose::ServerAuth,
                ];
            }
        }
        p.use_authority_key_identifier_extension = true;
        Ok(p)
    }
}

/// A certificate signing request for `key_pem`, as PEM.
pub fn csr(key_pem: &str, cn: &str, sans: &[String]) -> Result<String, PkiError> {
    let key = key_pair(key_pem)?;
    let mut p = CertificateParams::new(sans.to_vec())
        .map_err(|e| PkiError::Make(format!("bad subject alternative name: {e}")))?;
    p.distinguished_name
        .push(DnType::CommonName, cn.to_string());
    p.serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| PkiError::Make(e.to_string()))
}

/// A self-signed certificate (a root CA when `spec.ca` is set).
pub fn self_signed(key_pem: &str, spec: &Spec) -> Result<String, PkiError> {
    let key = key_pair(key_pem)?;
    spec.params()?
        .self_signed(&key)
        .map(|c| c.pem())
        .map_err(|e| PkiError::Make(e.to_string()))
}

/// What to certify: a key we hold, or a CSR from elsewhere.
pub enum Subject<'a> {
    Key(&'a str),
    Csr(&'a str),
}

/// Signs a certificate with the CA whose certificate is the first in
/// `ca_cert_pem` and whose key is `ca_key_pem`. Returns the leaf's PEM.
pub fn issue(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    subject: Subject<'_>,
    spec: &Spec,
) -> Result<String, PkiError> {
    let ca_key = key_pair(ca_key_pem)?;
    let first = first_pem_cert(ca_cert_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&first, ca_key)
        .map_err(|e| PkiError::Make(format!("unusable CA certificate: {e}")))?;
    let cert = match subject {
        Subject::Key(pem) => spec.params()?.signed_by(&key_pair(pem)?, &issuer),
        Subject::Csr(pem) => {
            let mut csr = CertificateSigningRequestParams::from_pem(pem)
                .map_err(|e| PkiError::Make(format!("unusable CSR: {e}")))?;
            let wanted = spec.params()?;
            // The CA decides validity and uses; the CSR brings the key
            // and, unless given here, the names.
            csr.params.not_before = wanted.not_before;
            csr.params.not_after = wanted.not_after;
            csr.params.serial_number = wanted.serial_number;
            csr.params.is_ca = wanted.is_ca;
            csr.params.key_usages = wanted.key_usages;
            csr.params.extended_key_usages = wanted.extended_key_usages;
            csr.params.use_authority_key_identifier_extension = true;
            if !spec.cn.is_empty() {
                csr.params.distinguished_name = wanted.distinguished_name;
            }
            if !spec.sans.is_empty() {
                csr.params.subject_alt_names = wanted.subject_alt_names;
            }
            csr.signed_by(&issuer)
        }
    };
    cert.map(|c| c.pem())
        .map_err(|e| PkiError::Make(e.to_string()))
}

/// The first `CERTIFICATE` block of a PEM text.
fn first_pem_cert(pem: &str) -> Result<String, PkiError> {
    let start = pem
        .find("-----BEGIN CERTIFICATE-----")
        .ok_or_else(|| PkiError::Make("no certificate in the CA certificate file".into()))?;
    let end_marker = "-----END CERTIFICATE-----";
    let (_, from_start) = pem.split_at(start);
    let (block, _) = from_start
        .split_once(end_marker)
        .ok_or_else(|| PkiError::Make("the CA certificate's PEM block is not closed".into()))?;
    Ok(format!("{block}{end_marker}\n"))
}

/// Every `CERTIFICATE` block of a PEM text, each ending in a newline.
pub fn pem_certs(pem: &str) -> String {
    let mut out = String::new();
    let mut rest = pem;
    while let Ok(block) = first_pem_cert(rest) {
        out.push_str(&block);
        let Some((_, after)) = rest.split_once("-----END CERTIFICATE-----") else {
            break;
        };
        rest = after;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::identity;

    fn spec(cn: &str, ca: Option<Option<u8>>) -> Spec {
        Spec {
            cn: cn.into(),
            sans: vec![],
            days: 30,
            not_after: None,
            ca,
        }
    }

    #[test]
    fn root_intermediate_leaf_chain_checks_out_and_mistakes_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root_key = keygen(KeyKind::EcP256).expect("key");
        let root = self_signed(&root_key, &spec("Site Root", Some(None))).expect("root");
        let int_key = keygen(KeyKind::EcP256).expect("key");
        let int = issue(
            &root,
            &root_key,
            Subject::Key(&int_key),
            &spec("Site Intermediate", Some(Some(0))),
        )
        .expect("intermediate");
        let leaf_key = keygen(KeyKind::EcP256).expect("key");
        let leaf = issue(
            &int,
            &int_key,
            Subject::Key(&leaf_key),
            &spec("gw-0042", None),
        )
        .expect("leaf");

        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write");
            p
        };
        let key = write("leaf.key", &leaf_key);
        let good = write("chain.pem", &format!("{leaf}{int}"));
        let checked = identity::check(&good, &key).expect("a good chain");
        assert_eq!(checked.identity.cn, "gw-0042");
        assert_eq!(checked.identity.issuer_cn, "Site Intermediate");
        assert_eq!(checked.identity.chain_len, 2);
        assert!((28..=30).contains(&checked.identity.days_left));

        let swapped = write("swapped.pem", &format!("{int}{leaf}"));
        assert!(matches!(
            identity::check(&swapped, &write("int.key", &int_key)),
            Err(crate::pki::PkiError::ChainOrder { index: 1, .. })
        ));
        let other = write("other.key", &keygen(KeyKind::EcP256).expect("key"));
        let err = identity::check(&good, &other).err().expect("mismatch");
        assert!(err.to_string().contains("does not belong"), "{err}");

        let expired = issue(
            &int,
            &int_key,
            Subject::Key(&leaf_key),
            &Spec {
                not_after: Some(OffsetDateTime::now_utc() - Duration::days(2)),
                ..spec("gw-old", None)
            },
        )
        .expect("expired leaf");
        let expired = write("expired.pem", &format!("{expired}{int}"));
        let err = identity::check(&expired, &key).err().expect("expired");
        assert!(err.to_string().contains("expired on"), "{err}");
    }

    #[test]
    fn a_csr_is_signed_with_the_cas_validity_and_an_rsa_key_works() {
        let ca_key = keygen(KeyKind::EcP256).expect("key");
        let ca = self_signed(&ca_key, &spec("CA", Some(None))).expect("ca");
        let rsa_key = keygen(KeyKind::Rsa(2048)).expect("rsa key");
        let request = csr(&rsa_key, "sensor-7", &["sensor-7.local".into()]).expect("csr");
        assert!(request.contains("BEGIN CERTIFICATE REQUEST"));
        let leaf = issue(
            &ca,
            &ca_key,
            Subject::Csr(&request),
            &Spec {
                cn: String::new(),
                ..spec("", None)
            },
        )
        .expect("signed csr");
        let dir = tempfile::tempdir().expect("tempdir");
        let chain = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        std::fs::write(&chain, format!("{leaf}{ca}")).expect("write");
        std::fs::write(&key, &rsa_key).expect("write");
        let checked = identity::check(&chain, &key).expect("rsa leaf from a csr");
        assert_eq!(checked.identity.cn, "sensor-7");
        assert!(keygen(KeyKind::Rsa(1024)).is_err());
    }
}
