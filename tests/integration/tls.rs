//! The uplink over TLS: `mqtts://` with the server verified against the
//! configured CA, with real certificates made by the test.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// Writes `ca.pem`, `server.pem` and `server.key` (for 127.0.0.1) into `dir`.
fn make_pki(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca");
    let server_key = KeyPair::generate().expect("server key");
    let mut server_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("server params");
    server_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let server = server_params
        .signed_by(&server_key, &ca)
        .expect("server cert");
    let ca_pem = dir.join(format!("{name}-ca.pem"));
    let cert = dir.join(format!("{name}-server.pem"));
    let key = dir.join(format!("{name}-server.key"));
    std::fs::write(&ca_pem, ca.pem()).expect("write ca");
    std::fs::write(&cert, server.pem()).expect("write cert");
    std::fs::write(&key, server_key.serialize_pem()).expect("write key");
    for p in [&ca_pem, &cert, &key] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .expect("chmod");
    }
    (ca_pem, cert, key)
}

/// mosquitto with its plain listener (for the test's collector) and a TLS
/// listener for outpost. Returns the broker and the TLS port.
fn tls_upstream(pki: &Path) -> (Upstream, u16) {
    let (ca, cert, key) = make_pki(pki, "good");
    let tls_port = free_port();
    let up = Upstream::start(&format!(
        "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}",
        ca.display(),
        cert.display(),
        key.display()
    ));
    assert!(
        wait_port(tls_port, Duration::from_secs(10)),
        "TLS listener up:\n{}",
        up.log()
    );
    (up, tls_port)
}

fn pki_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        d.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_cross_a_verified_tls_uplink() {
    let pki = pki_dir();
    let (up, tls_port) = tls_upstream(pki.path());
    let col = Collector::start(up.port, "site1/#").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let ca = pki.path().join("good-ca.pem");
    let text = config(
        dir.path(),
        port,
        &format!("mqtts://127.0.0.1:{tls_port}"),
        "",
        &format!("ca_file = \"{}\"", ca.display()),
    );
    let _op = Outpost::start(dir.path(), port, &text);
    assert_eq!(publish_devices(port, 2, 10).await, 20);
    assert!(col.wait_for(20, Duration::from_secs(20)).await >= 20);
    assert_complete_and_ordered(&col.all(), 2, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_signed_by_another_ca_is_refused_and_readings_stay_queued() {
    let pki = pki_dir();
    let (_up, tls_port) = tls_upstream(pki.path());
    let (other_ca, _, _) = make_pki(pki.path(), "other");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let text = config(
        dir.path(),
        port,
        &format!("mqtts://127.0.0.1:{tls_port}"),
        "",
        &format!("ca_file = \"{}\"", other_ca.display()),
    );
    let op = Outpost::start(dir.path(), port, &text);
    assert_eq!(publish_devices(port, 1, 5).await, 5);
    assert!(wait_until(Duration::from_secs(10), || op
        .log_text()
        .contains("upstream connection failed")));
    let log = op.log_text();
    assert!(
        log.contains("invalid peer certificate: UnknownIssuer"),
        "the TLS cause is named:\n{log}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || op.queued() == 5),
        "readings stay queued"
    );
}
