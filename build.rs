//! Records when this binary was built: a wall clock that reads earlier is
//! never trusted (a Pi without a real-time clock boots in the past).
//! `SOURCE_DATE_EPOCH` (reproducible builds) wins over the build machine's
//! clock.

use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.toml");
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
    let out = std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into());
    let ms = secs.saturating_mul(1000);
    let text = format!(
        "/// When this binary was built (ms since the epoch): a wall clock earlier\n\
         /// than this is wrong.\n\
         pub const BUILD_MS: i64 = {ms};\n"
    );
    if let Err(e) = std::fs::write(std::path::Path::new(&out).join("build_ms.rs"), text) {
        panic!("cannot write the build date: {e}");
    }
}
