//! The complete check of a candidate config: the one `check-config`, a
//! SIGHUP reload and a remote change all run, so that what a start would
//! trip over is refused before it runs, named by key path and file.
//!
//! `config::parse_table` checks the text (keys, values, ranges); this
//! checks what the text points at, the way the parts that use it will:
//! the broker's TLS certificate and key (and that they match), its client
//! CA, its password and ACL files, every sink's CA file and client
//! certificate, and that no two listeners share an address.

use std::net::SocketAddr;
use std::path::Path;

use crate::config::{Config, Problem, Problems};
use crate::net::BrokerUrl;

/// Everything wrong with what `config` points at (empty: it can start).
pub fn check(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let b = &config.broker;
    if let Some(t) = &b.tls {
        if let Err(e) = crate::source::broker::tls::acceptor(t) {
            problems.add("broker.tls", e);
        }
    }
    if let Err(e) = crate::source::broker::Auth::load(b) {
        let key = if b
            .acl_file
            .as_deref()
            .is_some_and(|f| e.to_string().contains(&f.display().to_string()))
        {
            "broker.acl_file"
        } else {
            "broker.password_file"
        };
        problems.add(key, e.to_string());
    }
    for (name, sink) in &config.sinks {
        let c = sink.connection();
        let tls = BrokerUrl::parse(c.url).is_ok_and(|u| u.tls);
        if tls {
            if let Err(e) = crate::sink::session::tls_config(name, c.ca_file, None) {
                problems.add(format!("sink.{name}.ca_file"), e.to_string());
            }
        } else if let Some(ca) = c.ca_file {
            readable(&mut problems, &format!("sink.{name}.ca_file"), ca);
        }
        if let (Some(chain), Some(key)) = sink.client_cert() {
            if let Err(e) = crate::pki::identity::check(chain, key) {
                problems.add(format!("sink.{name}.cert_file"), e.to_string());
            }
        }
    }
    listeners(config, &mut problems);
    for (key, path) in named_files(config) {
        if let Some(why) = service_cannot_read(&path) {
            problems.add(key, why);
        }
    }
    problems
}

/// The files the config names, with their key paths.
fn named_files(config: &Config) -> Vec<(String, std::path::PathBuf)> {
    let mut out = Vec::new();
    let b = &config.broker;
    if let Some(t) = &b.tls {
        out.push(("broker.tls.cert_file".to_string(), t.cert_file.clone()));
        out.push(("broker.tls.key_file".to_string(), t.key_file.clone()));
        if let Some(ca) = &t.client_ca_file {
            out.push(("broker.tls.client_ca_file".to_string(), ca.clone()));
        }
    }
    for (key, f) in [
        ("broker.password_file", &b.password_file),
        ("broker.acl_file", &b.acl_file),
    ] {
        if let Some(f) = f {
            out.push((key.to_string(), f.clone()));
        }
    }
    for (name, sink) in &config.sinks {
        if let Some(ca) = sink.connection().ca_file {
            out.push((format!("sink.{name}.ca_file"), ca.to_path_buf()));
        }
        let (cert, key) = sink.client_cert();
        for (k, f) in [("cert_file", cert), ("key_file", key)] {
            if let Some(f) = f {
                out.push((format!("sink.{name}.{k}"), f.clone()));
            }
        }
    }
    out
}

/// Checked as root for the packaged service (user `outpost`): can it read
/// `path`? The unit hides home directories (`ProtectHome=`), and the file's
/// mode must let the user or one of its groups read it.
fn service_cannot_read(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("outpost").ok().flatten()?;
    let shown = path.display();
    if ["/home/", "/root/", "/run/user/"]
        .iter()
        .any(|hidden| path.starts_with(hidden))
    {
        return Some(format!(
            "{shown} is in a home directory, which the outpost service cannot see (ProtectHome=); put it in /etc/outpost"
        ));
    }
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.mode();
    let name = std::ffi::CString::new("outpost").ok()?;
    let groups = nix::unistd::getgrouplist(&name, user.gid).unwrap_or_default();
    let readable = (meta.uid() == user.uid.as_raw() && mode & 0o400 != 0)
        || (groups.iter().any(|g| g.as_raw() == meta.gid()) && mode & 0o040 != 0)
        || mode & 0o004 != 0;
    (!readable).then(|| {
        format!(
            "{shown} is not readable by user outpost, which the service runs as (mode {:o}); e.g. `chgrp outpost {shown} && chmod g+r {shown}`",
            mode & 0o7777
        )
    })
}

fn readable(problems: &mut Vec<Problem>, key: &str, path: &Path) {
    if let Err(e) = std::fs::File::open(path) {
        problems.add(key, format!("cannot read {}: {e}", path.display()));
    }
}

/// No two listeners on one address (a port on 0.0.0.0 takes it on every
/// address).
fn listeners(config: &Config, problems: &mut Vec<Problem>) {
    let b = &config.broker;
    let mut all: Vec<(&str, SocketAddr)> = vec![("broker.listen", b.listen)];
    if let Some(a) = b.listen_v5 {
        all.push(("broker.listen_v5", a));
    }
    if let Some(t) = &b.tls {
        all.push(("broker.tls.listen", t.listen));
    }
    if let Some(a) = config.http.addr() {
        all.push(("http.listen", a));
    }
    for (i, (key, addr)) in all.iter().enumerate() {
        let clash = all.iter().take(i).find(|(_, other)| {
            other.port() == addr.port()
                && addr.port() != 0
                && (other.ip() == addr.ip()
                    || other.ip().is_unspecified()
                    || addr.ip().is_unspecified())
        });
        if let Some((other, at)) = clash {
            problems.add(
                *key,
                format!("{addr} is also {other} ({at}): two listeners cannot share a port"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tail: &str) -> Config {
        crate::config::parse(
            &format!(
                "state_dir = \"/tmp\"\n[broker]\nlisten = \"127.0.0.1:1883\"\n\
                 [[route]]\ntopic = \"s/+/t\"\nsink = \"up\"\n\
                 [sink.up]\ntype = \"mqtt\"\nurl = \"mqtts://example.org:8883\"\nca_file = \"/nonexistent/ca.pem\"\n{tail}\n"
            ),
            "test",
        )
        .expect("parses")
    }

    #[test]
    fn a_missing_ca_file_is_named_by_its_key_path() {
        let problems = check(&config(""));
        assert!(
            problems
                .iter()
                .any(|p| p.path == "sink.up.ca_file" && p.message.contains("/nonexistent/ca.pem")),
            "{problems:?}"
        );
    }

    #[test]
    fn two_listeners_on_one_port_are_refused() {
        let problems = check(&config("[http]\nlisten = \"127.0.0.1:1883\""));
        assert!(
            problems.iter().any(|p| p.path == "http.listen"),
            "{problems:?}"
        );
    }
}
