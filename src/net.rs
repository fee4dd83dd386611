//! Network addresses: broker URLs as the config writes them, and loopback
//! port helpers shared by the daemon, the benchmark and the tests.

use std::net::{SocketAddr, TcpListener};

/// The first port of the kernel's ephemeral range (where `bind(:0)` and
/// outgoing connections take their local ports).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(32768)
}

/// A free port on 127.0.0.1 outside the ephemeral range.
///
/// Some programs (rumqttd, mosquitto) bind their own sockets, so a port has
/// to be chosen, released and then bound by them. A port from `bind(:0)`
/// could be taken in that moment by any outgoing connection; one below the
/// ephemeral range cannot.
pub fn free_loopback_port(except: Option<u16>) -> std::io::Result<u16> {
    let low = ephemeral_start();
    let (from, to) = if low > 12_000 {
        (10_000, low)
    } else {
        (49_152, u16::MAX)
    };
    let mut last = None;
    for _ in 0..500 {
        let port = fastrand::u16(from..to);
        if Some(port) == except {
            continue;
        }
        match TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))) {
            Ok(_) => return Ok(port),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free loopback port found")))
}

/// Is a socket of this network namespace listening on `port`? Reads the
/// kernel's socket tables (`/proc/net/tcp{,6}`: local address
/// `HEX_IP:HEX_PORT`, state `0A` = LISTEN) instead of connecting, which a
/// broker would log as a client that never said CONNECT.
pub fn is_listening(port: u16) -> bool {
    let want = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                let mut cols = line.split_whitespace();
                let local = cols.nth(1).unwrap_or_default();
                let state = cols.nth(1).unwrap_or_default();
                state == "0A" && local.ends_with(&want)
            })
        })
    })
}

/// The local addresses of this network namespace's sockets listening on
/// `port` (from `/proc/net/tcp{,6}`; a socket of another user's process
/// is listed too, though its process is not).
pub fn listeners_on(port: u16) -> Vec<std::net::SocketAddr> {
    let want = format!(":{port:04X}");
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1).unwrap_or_default();
            let state = cols.nth(1).unwrap_or_default();
            if state != "0A" || !local.ends_with(&want) {
                continue;
            }
            let hex = local.split(':').next().unwrap_or_default();
            if let Some(ip) = proc_ip(hex) {
                out.push(std::net::SocketAddr::new(ip, port));
            }
        }
    }
    out
}

/// An address as `/proc/net/tcp` writes it: 32-bit words in the host's
/// order, as hex.
fn proc_ip(hex: &str) -> Option<std::net::IpAddr> {
    let words: Vec<[u8; 4]> = hex
        .as_bytes()
        .chunks(8)
        .map(|w| {
            std::str::from_utf8(w)
                .ok()
                .and_then(|w| u32::from_str_radix(w, 16).ok())
                .map(u32::to_ne_bytes)
        })
        .collect::<Option<_>>()?;
    match words.as_slice() {
        [a] => Some(std::net::Ipv4Addr::from(*a).into()),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (slot, byte) in bytes.iter_mut().zip(a.iter().chain(b).chain(c).chain(d)) {
                *slot = *byte;
            }
            Some(std::net::Ipv6Addr::from(bytes).into())
        }
        _ => None,
    }
}

/// A parsed `mqtt://` or `mqtts://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<BrokerUrl, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(format!(
                "`{url}` must start with mqtt:// or mqtts:// (e.g. mqtts://mqtt.example.com:8883)"
            ));
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('@') {
            return Err(format!(
                "`{url}`: give only host and port; put credentials in username/password"
            ));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{url}`: unclosed `[` in IPv6 address"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("`{url}`: `{p}` is not a port number"))?,
            None if tls => 8883,
            None => 1883,
        };
        Ok(BrokerUrl { tls, host, port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            BrokerUrl::parse("mqtt://localhost"),
            Ok(BrokerUrl {
                tls: false,
                host: "localhost".into(),
                port: 1883
            })
        );
        assert_eq!(
            BrokerUrl::parse("mqtts://broker.example:8884"),
            Ok(BrokerUrl {
                tls: true,
                host: "broker.example".into(),
                port: 8884
            })
        );
        assert_eq!(
            BrokerUrl::parse("mqtt://[::1]:1999"),
            Ok(BrokerUrl {
                tls: false,
                host: "::1".into(),
                port: 1999
            })
        );
        assert!(BrokerUrl::parse("http://x").is_err());
        assert!(BrokerUrl::parse("mqtt://x:notaport").is_err());
        assert!(BrokerUrl::parse("mqtt://user:pw@x").is_err());
    }
}
