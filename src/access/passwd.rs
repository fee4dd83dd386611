//! Mosquitto's password file, as `mosquitto_passwd` writes it: one
//! `user:hash` line per user, the hash `$7$ITERATIONS$SALT$HASH`
//! (PBKDF2-HMAC-SHA512, the default since Mosquitto 2.0) or `$6$SALT$HASH`
//! (SHA-512 of password and salt, older files), salt and hash in base64.
//! Blank lines and lines starting with `#` are skipped, as Mosquitto does.
//!
//! A site's existing file works unchanged, and what `outpost passwd`
//! writes works in Mosquitto. Passwords are checked in constant time, and
//! an unknown user costs the same as a known one.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::{digest, pbkdf2, rand::SecureRandom};

use super::FileError;

/// Mosquitto's salt length and default PBKDF2 iterations.
const SALT_LEN: usize = 12;
const ITERATIONS: u32 = 101;
/// More iterations than this in a file is a typo or an attack on startup
/// time.
const MAX_ITERATIONS: u32 = 10_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Hash {
    /// `$6$`: SHA-512(password ‖ salt).
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2 {
        iterations: NonZeroU32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

/// The users of a password file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PasswordFile {
    users: HashMap<String, Hash>,
}

impl PasswordFile {
    pub fn load(path: &Path) -> Result<PasswordFile, FileError> {
        let text = super::read(path)?;
        PasswordFile::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<PasswordFile, FileError> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let at = |problem: String| FileError {
                path: path.to_path_buf(),
                line: i.saturating_add(1),
                problem,
            };
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| at("not `user:hash`".into()))?;
            if user.is_empty() {
                return Err(at("an empty user name".into()));
            }
            users.insert(user.to_string(), parse_hash(hash).map_err(at)?);
        }
        Ok(PasswordFile { users })
    }

    /// Users of `self` that `next` no longer has, or has with another
    /// password (a reload that revokes them).
    pub fn revoked_in(&self, next: &PasswordFile) -> Vec<String> {
        self.users
            .iter()
            .filter(|(user, hash)| next.users.get(*user) != Some(*hash))
            .map(|(user, _)| user.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Is `password` the password of `user`?
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(h) => matches(h, password),
            None => {
                // The same work for an unknown user, so timing tells nothing.
                let dummy = Hash::Pbkdf2 {
                    iterations: NonZeroU32::MIN.saturating_add(ITERATIONS - 1),
                    salt: vec![0; SALT_LEN],
                    hash: vec![0; digest::SHA512_OUTPUT_LEN],
                };
                let _ = matches(&dummy, password);
                false
            }
        }
    }
}

fn parse_hash(text: &str) -> Result<Hash, String> {
    let parts: Vec<&str> = text.split('$').collect();
    let b64 = |s: &str, what: &str| {
        B64.decode(s)
            .map_err(|_| format!("the {what} is not base64"))
    };
    match parts.as_slice() {
        ["", "7", iterations, salt, hash] => {
            let n: u32 = iterations
                .parse()
                .map_err(|_| format!("`{iterations}` is not a number of iterations"))?;
            let iterations = NonZeroU32::new(n)
                .filter(|n| n.get() <= MAX_ITERATIONS)
                .ok_or_else(|| format!("{n} iterations: use 1 to {MAX_ITERATIONS}"))?;
            Ok(Hash::Pbkdf2 {
                iterations,
                salt: b64(salt, "salt")?,
                hash: b64(hash, "hash")?,
            })
        }
        ["", "6", salt, hash] => Ok(Hash::Sha512 {
            salt: b64(salt, "salt")?,
            hash: b64(hash, "hash")?,
        }),
        ["", kind, ..] => Err(format!(
            "unknown hash type `${kind}$` (Mosquitto's are $7$, PBKDF2-SHA512, and $6$, SHA-512)"
        )),
        _ => Err("the password is not hashed (make the file with `outpost passwd` or `mosquitto_passwd`)".into()),
    }
}

fn matches(h: &Hash, password: &[u8]) -> bool {
    match h {
        Hash::Pbkdf2 {
            iterations,
            salt,
            hash,
        } => pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA512,
            *iterations,
            salt,
            password,
            hash,
        )
        .is_ok(),
        Hash::Sha512 { salt, hash } => {
            let mut ctx = digest::Context::new(&digest::SHA512);
            ctx.update(password);
            ctx.update(salt);
            constant_time_eq(ctx.finish().as_ref(), hash)
        }
    }
}

/// Equal, in time that depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new `$7$` hash of `password`, as `mosquitto_passwd` makes it.
pub fn hash(password: &str) -> Result<String, String> {
    let mut salt = [0u8; SALT_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| "no randomness for a salt".to_string())?;
    let mut out = [0u8; digest::SHA512_OUTPUT_LEN];
    let iterations = NonZeroU32::MIN.saturating_add(ITERATIONS - 1);
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA512,
        iterations,
        &salt,
        password.as_bytes(),
        &mut out,
    );
    Ok(format!(
        "$7${ITERATIONS}${}${}",
        B64.encode(salt),
        B64.encode(out)
    ))
}

/// Adds `user` to the password file at `path`, or changes its password;
/// every other line stays as it was. A new file is made readable by its
/// owner only; an existing one keeps its mode and owner.
pub fn set_user(path: &Path, user: &str, password: &str) -> Result<(), String> {
    if user.is_empty() || user.contains(':') || user.contains(char::is_control) {
        return Err("a user name is not empty and has no `:` or control characters".into());
    }
    let old = match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let line = format!("{user}:{}", hash(password)?);
    let mut lines: Vec<String> = Vec::new();
    let mut replaced = false;
    for l in old.as_deref().unwrap_or_default().lines() {
        if l.split_once(':').is_some_and(|(u, _)| u == user) && !l.starts_with('#') {
            if !replaced {
                lines.push(line.clone());
                replaced = true;
            }
        } else {
            lines.push(l.to_string());
        }
    }
    if !replaced {
        lines.push(line);
    }
    let text = lines.join("\n") + "\n";
    write_keeping_owner(path, text.as_bytes())
}

fn write_keeping_owner(path: &Path, text: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(path).ok();
    crate::files::write_private(path, text)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    if let Some(m) = meta {
        let restore = || -> std::io::Result<()> {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
            std::os::unix::fs::chown(path, Some(m.uid()), Some(m.gid()))
        };
        restore()
            .map_err(|e| format!("cannot keep the owner and mode of {}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_made_here_verify_and_survive_a_rewrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("passwd");
        std::fs::write(&path, "# sensors\nold:$6$c2FsdHNhbHRzYWx0$AAAA\n").expect("write");
        set_user(&path, "sensor1", "s3cret").expect("add");
        set_user(&path, "sensor2", "other").expect("add");
        set_user(&path, "sensor1", "new").expect("change");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("# sensors\nold:"), "{text}");
        assert_eq!(text.matches("sensor1:").count(), 1, "{text}");
        let f = PasswordFile::load(&path).expect("parse");
        assert!(f.verify("sensor1", b"new"));
        assert!(!f.verify("sensor1", b"s3cret"));
        assert!(f.verify("sensor2", b"other"));
        assert!(!f.verify("nobody", b"other"));
        assert!(text.contains("sensor2:$7$101$"));
    }

    #[test]
    fn sha512_hashes_of_older_files_verify() {
        let salt = b"0123456789ab";
        let mut ctx = digest::Context::new(&digest::SHA512);
        ctx.update(b"pw");
        ctx.update(salt);
        let line = format!(
            "u:$6${}${}",
            B64.encode(salt),
            B64.encode(ctx.finish().as_ref())
        );
        let f = PasswordFile::parse(&line, Path::new("p")).expect("parse");
        assert!(f.verify("u", b"pw"));
        assert!(!f.verify("u", b"pW"));
    }

    #[test]
    fn bad_lines_are_named_with_their_number() {
        let err = PasswordFile::parse("a:$7$101$AAAA$AAAA\nb:plain\n", Path::new("/etc/pw"))
            .expect_err("plain");
        assert_eq!(err.line, 2);
        assert!(err.to_string().starts_with("/etc/pw:2: "), "{err}");
        let err = PasswordFile::parse("a:$5$x$y", Path::new("p")).expect_err("type");
        assert!(err.problem.contains("unknown hash type `$5$`"), "{err}");
        let err = PasswordFile::parse("a:$7$0$AAAA$AAAA", Path::new("p")).expect_err("zero");
        assert!(err.problem.contains("iterations"), "{err}");
    }
}
