//! The broker's side of access control: the password and ACL files as
//! loaded (see [`crate::access`]), swapped whole when SIGHUP reloads them,
//! and the answers the connections and the session store ask for.
//!
//! Logins follow Mosquitto 2.0: with a password file, a client that gives a
//! username must give its password; one without a username gets in only
//! with `allow_anonymous = true`. Without a password file a username is
//! taken as given (for the ACL). On a TLS listener with
//! `use_identity_as_username`, the certificate's CN is the username and no
//! password is asked. outpost's own clients are not subject to any of it.

use std::path::PathBuf;
use std::sync::Arc;

use crate::access::{Access, Acl, FileError, PasswordFile, Who};
use crate::config::BrokerConfig;

/// Why a login was refused, for the log (never with the password).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    BadPassword,
    Anonymous,
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Refused::BadPassword => "bad username or password",
            Refused::Anonymous => "no username, and anonymous clients are not allowed",
        }
    }
}

#[derive(Debug, Default)]
pub struct Auth {
    passwords: Option<PasswordFile>,
    acl: Option<Arc<Acl>>,
    allow_anonymous: bool,
    password_file: Option<PathBuf>,
    acl_file: Option<PathBuf>,
}

impl Auth {
    /// Reads the files `cfg` names.
    pub fn load(cfg: &BrokerConfig) -> Result<Auth, FileError> {
        Auth::read(
            cfg.password_file.clone(),
            cfg.acl_file.clone(),
            cfg.anonymous_allowed(),
        )
    }

    fn read(
        password_file: Option<PathBuf>,
        acl_file: Option<PathBuf>,
        allow_anonymous: bool,
    ) -> Result<Auth, FileError> {
        let passwords = password_file
            .as_deref()
            .map(PasswordFile::load)
            .transpose()?;
        let acl = acl_file
            .as_deref()
            .map(Acl::load)
            .transpose()?
            .map(Arc::new);
        Ok(Auth {
            passwords,
            acl,
            allow_anonymous,
            password_file,
            acl_file,
        })
    }

    /// The same files read again (SIGHUP).
    pub fn reload(&self) -> Result<Auth, FileError> {
        Auth::read(
            self.password_file.clone(),
            self.acl_file.clone(),
            self.allow_anonymous,
        )
    }

    /// What the files hold, for the log.
    pub fn describe(&self) -> String {
        format!(
            "{} user(s) in the password file, ACL {}",
            self.passwords.as_ref().map_or(0, PasswordFile::len),
            if self.acl.is_some() { "on" } else { "off" }
        )
    }

    /// Logins `next` takes away: users removed from the password file or
    /// whose password changed (every password user, when the file goes).
    pub fn revoked_in(&self, next: &Auth) -> Vec<String> {
        match (&self.passwords, &next.passwords) {
            (Some(old), Some(new)) => old.revoked_in(new),
            (Some(old), None) => old.revoked_in(&PasswordFile::default()),
            (None, _) => Vec::new(),
        }
    }

    pub fn acl(&self) -> Option<Arc<Acl>> {
        self.acl.clone()
    }

    /// The username a client has once in, or why it is not let in.
    /// `identity`: the certificate CN on a listener that takes it as the
    /// username.
    pub fn login(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
        identity: Option<&str>,
    ) -> Result<Option<String>, Refused> {
        if let Some(cn) = identity {
            return Ok(Some(cn.to_string()));
        }
        match (username, &self.passwords) {
            (Some(u), Some(file)) => {
                if file.verify(u, password.unwrap_or_default()) {
                    Ok(Some(u.to_string()))
                } else {
                    Err(Refused::BadPassword)
                }
            }
            (Some(u), None) => Ok(Some(u.to_string())),
            (None, _) if self.allow_anonymous => Ok(None),
            (None, _) => Err(Refused::Anonymous),
        }
    }

    /// May this client do `access` on `topic`? Everything, without an ACL.
    pub fn may(
        &self,
        username: Option<&str>,
        client_id: &str,
        topic: &str,
        access: Access,
    ) -> bool {
        may(self.acl.as_deref(), username, client_id, topic, access)
    }
}

/// [`Auth::may`] for a given ACL (the session store keeps its own copy).
pub fn may(
    acl: Option<&Acl>,
    username: Option<&str>,
    client_id: &str,
    topic: &str,
    access: Access,
) -> bool {
    acl.map_or(true, |a| {
        a.allows(
            Who {
                username,
                client_id,
            },
            topic,
            access,
        )
    })
}
