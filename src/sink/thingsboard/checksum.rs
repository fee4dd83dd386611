//! Firmware checksums as ThingsBoard computes and prints them:
//! `BaseOtaPackageService.generateChecksum` hashes the package with
//! Guava (`Hashing.md5()`, `sha256()`, `sha384()`, `sha512()`, `crc32()`,
//! `murmur3_32()`, `murmur3_128()`) and prints `HashCode.toString()`: the
//! hash's bytes in order, lowercase hex. For the digests that is the usual
//! form; for CRC32 and Murmur3-32 the bytes of an `int` hash are
//! little-endian (a CRC32 of `46bc78e1` prints as `e178bc46`), and
//! Murmur3-128 is its two 64-bit halves, each little-endian.

use std::fmt::Write as _;

/// The algorithms ThingsBoard offers (`ChecksumAlgorithm`).
pub(super) const SUPPORTED: &str = "SHA256, SHA384, SHA512, MD5, CRC32, MURMUR3_32, MURMUR3_128";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn normal(algorithm: &str) -> String {
    algorithm.to_ascii_uppercase().replace(['-', '_'], "")
}

/// Is `algorithm` one outpost can check (before any byte is fetched)?
pub(super) fn supported(algorithm: &str) -> bool {
    matches!(
        normal(algorithm).as_str(),
        "SHA256" | "SHA384" | "SHA512" | "MD5" | "CRC32" | "MURMUR332" | "MURMUR3128"
    )
}

/// The checksum of `data` as ThingsBoard prints it.
pub(super) fn digest(algorithm: &str, data: &[u8]) -> Result<String, String> {
    let ring =
        |alg: &'static ring::digest::Algorithm| hex(ring::digest::digest(alg, data).as_ref());
    match normal(algorithm).as_str() {
        "SHA256" => Ok(ring(&ring::digest::SHA256)),
        "SHA384" => Ok(ring(&ring::digest::SHA384)),
        "SHA512" => Ok(ring(&ring::digest::SHA512)),
        "MD5" => {
            use md5::Digest;
            Ok(hex(&md5::Md5::digest(data)))
        }
        "CRC32" => Ok(hex(&crc32fast::hash(data).to_le_bytes())),
        "MURMUR332" => Ok(hex(&murmur3_32(data).to_le_bytes())),
        "MURMUR3128" => {
            let (h1, h2) = murmur3_128(data);
            let mut bytes = h1.to_le_bytes().to_vec();
            bytes.extend_from_slice(&h2.to_le_bytes());
            Ok(hex(&bytes))
        }
        _ => Err(format!(
            "checksum algorithm {algorithm} is not supported ({SUPPORTED})"
        )),
    }
}

/// MurmurHash3 x86_32, seed 0 (Guava's `murmur3_32()` over bytes).
fn murmur3_32(data: &[u8]) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mix = |k: u32| k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    let mut h: u32 = 0;
    let mut blocks = data.chunks_exact(4);
    for b in &mut blocks {
        let k = b.iter().rev().fold(0u32, |k, x| (k << 8) | u32::from(*x));
        h ^= mix(k);
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        let k = tail
            .iter()
            .rev()
            .fold(0u32, |k, b| (k << 8) | u32::from(*b));
        h ^= mix(k);
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// MurmurHash3 x64_128, seed 0 (Guava's `murmur3_128()`): (h1, h2).
fn murmur3_128(data: &[u8]) -> (u64, u64) {
    const C1: u64 = 0x87c3_7b91_1142_53d5;
    const C2: u64 = 0x4cf5_ad43_2745_937f;
    let mix1 = |k: u64| k.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
    let mix2 = |k: u64| k.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
    let le = |b: &[u8]| b.iter().rev().fold(0u64, |k, x| (k << 8) | u64::from(*x));
    let (mut h1, mut h2) = (0u64, 0u64);
    let mut blocks = data.chunks_exact(16);
    for b in &mut blocks {
        let (lo, hi) = b.split_at(8);
        h1 ^= mix1(le(lo));
        h1 = h1
            .rotate_left(27)
            .wrapping_add(h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);
        h2 ^= mix2(le(hi));
        h2 = h2
            .rotate_left(31)
            .wrapping_add(h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }
    let tail = blocks.remainder();
    if tail.len() > 8 {
        h2 ^= mix2(le(tail.get(8..).unwrap_or_default()));
    }
    if !tail.is_empty() {
        h1 ^= mix1(le(tail.get(..8.min(tail.len())).unwrap_or_default()));
    }
    let len = data.len() as u64;
    h1 ^= len;
    h2 ^= len;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    let fmix = |mut k: u64| {
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^ (k >> 33)
    };
    h1 = fmix(h1);
    h2 = fmix(h2);
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    (h1, h2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values: the `mmh3` package (the reference C code) packed
    /// little-endian as Guava prints them, and zlib's CRC32 likewise.
    #[test]
    fn checksums_print_as_thingsboard_prints_them() {
        let fox = b"The quick brown fox jumps over the lazy dog";
        assert_eq!(digest("CRC32", fox).expect("crc"), "39a34f41");
        assert_eq!(digest("MURMUR3_32", b"").expect("m32"), "00000000");
        assert_eq!(digest("MURMUR3_32", b"hello").expect("m32"), "47fa8b24");
        assert_eq!(digest("MURMUR3_32", fox).expect("m32"), "23f74f2e");
        assert_eq!(
            digest("MURMUR3_128", b"hello").expect("m128"),
            "029bbd41b3a7d8cb191dae486a901e5b"
        );
        assert_eq!(
            digest("MURMUR3_128", fox).expect("m128"),
            "6c1b07bc7bbc4be347939ac4a93c437a"
        );
        let bytes: Vec<u8> = (0..37).collect();
        assert_eq!(digest("MURMUR3_32", &bytes).expect("m32"), "75e247b1");
        assert_eq!(
            digest("MURMUR3_128", &bytes).expect("m128"),
            "20d802dd5ead7451b0cd03c799538480"
        );
        assert_eq!(
            digest("SHA256", b"abc").expect("sha"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn an_unknown_algorithm_is_known_to_be_unsupported_up_front() {
        assert!(supported("murmur3_128"));
        assert!(supported("CRC32"));
        assert!(!supported("SHA1"));
        assert!(digest("SHA1", b"x").is_err());
    }
}
