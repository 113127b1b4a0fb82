//! Authentication: the password file and its argon2id hashes.
//!
//! A password file has one user a line, `user:hash`, where the hash is a PHC string of a
//! salted argon2id hash (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`); `#` starts a comment
//! line, blank lines are skipped. `hermes-mqtt passwd FILE USER` adds a user or changes a
//! password, `hermes-mqtt passwd --delete FILE USER` removes one. Each hash carries its own
//! parameters, so a file may mix costs (after `argon2_*` changed, say).
//!
//! ```
//! use hermes_mqtt::auth::{HashParams, PasswordFile, hash_password, verify_password};
//!
//! let cheap = HashParams { memory_kib: 8, iterations: 1, parallelism: 1 }; // tests only
//! let mut file = PasswordFile::default();
//! file.set("alice", hash_password(b"wonderland", cheap).unwrap()).unwrap();
//! let text = file.to_text();
//! let file = PasswordFile::parse(&text).unwrap();
//! assert!(verify_password(b"wonderland", file.get("alice").unwrap()));
//! assert!(!verify_password(b"looking glass", file.get("alice").unwrap()));
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::config::LineError;

/// The argon2id cost of new hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HashParams {
    /// Memory, in KiB (at least 8 per lane).
    pub memory_kib: u32,
    /// Passes over the memory (at least 1).
    pub iterations: u32,
    /// Lanes (1 to 255).
    pub parallelism: u32,
}

impl HashParams {
    /// OWASP's recommendation for argon2id: 19 MiB, 2 passes, 1 lane (some 20 to 50 ms a
    /// verification on a server core).
    pub const DEFAULT: HashParams = HashParams {
        memory_kib: 19_456,
        iterations: 2,
        parallelism: 1,
    };

    fn argon2(self) -> Result<Argon2<'static>, AuthError> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| AuthError::Params(e.to_string()))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// The parameters of a PHC hash string, if it is an argon2 one.
    #[must_use]
    pub fn of_hash(hash: &str) -> Option<HashParams> {
        let parsed = PasswordHash::new(hash).ok()?;
        let params = Params::try_from(&parsed).ok()?;
        Some(HashParams {
            memory_kib: params.m_cost(),
            iterations: params.t_cost(),
            parallelism: params.p_cost(),
        })
    }
}

impl Default for HashParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What went wrong with passwords or the password file. Each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The argon2 parameters are not usable.
    #[error(
        "bad argon2 parameters: {0} (see argon2_memory_kib, argon2_iterations and \
         argon2_parallelism in the README)"
    )]
    Params(String),
    /// Hashing failed.
    #[error("cannot hash the password: {0}")]
    Hash(String),
    /// The password file cannot be read or written.
    #[error("cannot {action} the password file {}: {source} (check the path and its permissions)", path.display())]
    Io {
        /// "read" or "write".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line of the password file is not `user:argon2-hash`.
    #[error("{0} (each line is `user:hash`, as `hermes-mqtt passwd FILE USER` writes it)")]
    Line(LineError),
    /// A user name that a password file cannot hold.
    #[error("{0:?} cannot be a user name here: give one without ':' or line breaks, not empty")]
    BadUserName(String),
}

/// Hashes `password` with argon2id, a fresh random salt and `params`: a PHC string.
pub fn hash_password(password: &[u8], params: HashParams) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    params
        .argon2()?
        .hash_password(password, &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Whether `password` is the one `hash` (a PHC string, with its own parameters) was made
/// from. Takes as long as the hash's parameters make it, and false for a hash that is not
/// valid. Runs the whole computation: call it off the async threads.
#[must_use]
pub fn verify_password(password: &[u8], hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
        Err(_) => false,
    }
}

/// The users of a password file and their hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PasswordFile {
    users: BTreeMap<String, String>,
}

impl PasswordFile {
    /// Reads the file at `path`; errors name the file and line.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            AuthError::Line(line) => AuthError::Line(line.in_file(path)),
            other => other,
        })
    }

    /// Reads a password file's text.
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        let mut users = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let bad = |message: String| AuthError::Line(LineError::new(i + 1, message));
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(bad("no ':' between the user name and the hash".into()));
            };
            if user.is_empty() {
                return Err(bad("the user name is empty".into()));
            }
            let Ok(parsed) = PasswordHash::new(hash) else {
                return Err(bad(format!(
                    "the hash of {user:?} is not a PHC string such as $argon2id$v=19$..."
                )));
            };
            if !parsed.algorithm.as_str().starts_with("argon2") {
                return Err(bad(format!(
                    "the hash of {user:?} is {}, not argon2: set the password again with \
                     `hermes-mqtt passwd`",
                    parsed.algorithm
                )));
            }
            if HashParams::of_hash(hash).is_none() {
                return Err(bad(format!(
                    "the hash of {user:?} has bad argon2 parameters"
                )));
            }
            if users.insert(user.to_owned(), hash.to_owned()).is_some() {
                return Err(bad(format!("{user:?} is in the file twice")));
            }
        }
        Ok(Self { users })
    }

    /// The hash of `user`.
    #[must_use]
    pub fn get(&self, user: &str) -> Option<&str> {
        self.users.get(user).map(String::as_str)
    }

    /// Sets the hash of `user` (added, or replaced).
    pub fn set(&mut self, user: &str, hash: String) -> Result<(), AuthError> {
        if user.is_empty() || user.contains([':', '\n', '\r']) {
            return Err(AuthError::BadUserName(user.to_owned()));
        }
        self.users.insert(user.to_owned(), hash);
        Ok(())
    }

    /// Removes `user`; whether it was there.
    pub fn remove(&mut self, user: &str) -> bool {
        self.users.remove(user).is_some()
    }

    /// The user names, sorted.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// How many users.
    #[must_use]
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there is no user.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The parameters of the first hash, if any: what a verification usually costs.
    #[must_use]
    pub fn typical_params(&self) -> Option<HashParams> {
        self.users.values().find_map(|h| HashParams::of_hash(h))
    }

    /// The file's text.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut text = String::from("# hermes-mqtt password file: user:argon2id-hash\n");
        for (user, hash) in &self.users {
            text.push_str(user);
            text.push(':');
            text.push_str(hash);
            text.push('\n');
        }
        text
    }

    /// Writes the file at `path`, readable by its owner only (on Unix), replacing it
    /// atomically (a temporary file beside it, renamed).
    pub fn save(&self, path: &Path) -> Result<(), AuthError> {
        let io = |source| AuthError::Io {
            action: "write",
            path: path.to_owned(),
            source,
        };
        let name = path.file_name().map_or_else(
            || std::ffi::OsString::from("passwords"),
            std::ffi::OsStr::to_owned,
        );
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(&name);
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        {
            use std::io::Write;
            let mut file = options.open(&tmp).map_err(io)?;
            file.write_all(self.to_text().as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: HashParams = HashParams {
        memory_kib: 8,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn hashes_are_salted_argon2id_with_their_parameters() {
        let a = hash_password(b"pw", CHEAP).unwrap();
        let b = hash_password(b"pw", CHEAP).unwrap();
        assert_ne!(a, b, "a fresh salt each time");
        assert!(a.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{a}");
        assert_eq!(HashParams::of_hash(&a), Some(CHEAP));
        assert!(verify_password(b"pw", &a));
        assert!(!verify_password(b"pW", &a));
        assert!(!verify_password(b"pw", "not a hash"));
    }

    #[test]
    fn file_round_trip_and_errors_name_the_line() {
        let mut file = PasswordFile::default();
        file.set("alice", hash_password(b"a", CHEAP).unwrap())
            .unwrap();
        file.set("bob", hash_password(b"b", CHEAP).unwrap())
            .unwrap();
        assert!(file.set("a:b", String::new()).is_err());
        let text = format!("\n# comment\n{}", file.to_text());
        let parsed = PasswordFile::parse(&text).unwrap();
        assert_eq!(parsed, file);
        assert_eq!(parsed.users().collect::<Vec<_>>(), ["alice", "bob"]);
        assert!(parsed.clone().remove("bob"));

        for (text, line, what) in [
            ("alice", 1, "no ':'"),
            ("# c\n:$argon2id$", 2, "empty"),
            ("alice:secret", 1, "PHC"),
            ("alice:$7$101$abc$def", 1, "PHC"),
        ] {
            let e = PasswordFile::parse(text).unwrap_err().to_string();
            assert!(e.contains(&format!("line {line}:")), "{text}: {e}");
            assert!(e.contains(what), "{text}: {e}");
        }
        let twice = format!("{}{}", file.to_text(), file.to_text());
        let e = PasswordFile::parse(&twice).unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn save_is_private_and_load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        let mut file = PasswordFile::default();
        file.set("alice", hash_password(b"a", CHEAP).unwrap())
            .unwrap();
        file.save(&path).unwrap();
        assert_eq!(PasswordFile::load(&path).unwrap(), file);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "broken\n").unwrap();
        let e = PasswordFile::load(&path).unwrap_err().to_string();
        assert!(e.contains("passwd: line 1"), "{e}");
        let e = PasswordFile::load(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing") && e.contains("read"), "{e}");
    }
}
