//! Test harness: real processes on loopback, one file per job.
//!
//! - [`upstream`]: Debian's `mosquitto` on a free loopback port, with a
//!   config the test writes, standing in for the cloud broker;
//! - [`collector`]: a persistent-session subscriber on that broker (nothing
//!   published while it reconnects is missed), and checks of what it saw;
//! - [`binary`]: the real `outpost` binary, started on a config the test
//!   writes, stopped with SIGTERM or SIGKILL;
//! - [`clients`]: LAN publishers and subscribers on outpost's broker;
//! - [`pty`]: serial sensors on real pseudo-terminals;
//! - [`http`]: a plain HTTP/1.1 client (the status page, ingest);
//! - [`raw`]: a raw MQTT client that sends exactly what a test says;
//! - [`sqlite`]: the outbox file read from outside;
//! - [`world`]: the preamble most tests share (upstream, temp dir, port,
//!   config header, start), folded into one builder;
//! - [`image`]: a small ext4 filesystem on a loop device, to fill or fail;
//! - [`proxy`]: a proxy before the upstream that can withhold its PUBACKs;
//! - [`tb_server`]: ThingsBoard's MQTT transport as its source behaves, in
//!   front of the upstream: it parses every uplink with the server's rules
//!   and closes the session where the server would;
//! - [`watched`]: an outpost watched by an upstream collector, with the
//!   canary that proves it still serves everyone after a hostile case.
//!
//! Every process is killed when its handle drops, and every wait is bounded.
#![allow(dead_code)]

mod binary;
mod clients;
mod collector;
mod http;
mod image;
mod process;
mod proxy;
mod pty;
mod raw;
mod sqlite;
mod tb_server;
mod upstream;
mod watched;
mod world;

use std::net::TcpStream;
use std::time::{Duration, Instant};

pub use binary::*;
pub use clients::*;
pub use collector::*;
pub use http::*;
pub use image::*;
pub use process::wait_exit;
pub use proxy::*;
pub use pty::*;
pub use raw::*;
pub use sqlite::*;
pub use tb_server::{assert_taken, gateway_attributes_request, judge, TbServer, Verdict};
pub use upstream::*;
pub use watched::*;
pub use world::*;

/// Fails (never skips) when a tool the tests need is missing.
pub fn require(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: the tests need it. Install it with `apt-get install -y {package}`"
    );
}

/// A free loopback port outside the kernel's ephemeral range, so that no
/// outgoing connection can take it before the process it is meant for binds.
pub fn free_port() -> u16 {
    outpost::net::free_loopback_port(None).expect("a free loopback port")
}

pub fn wait_port(port: u16, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Polls `cond` every 20 ms until it holds or `within` passes.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
