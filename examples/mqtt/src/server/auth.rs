//! Authentication at CONNECT: `allow_anonymous` and the password file, verified off the async
//! threads, at most one verification per core at once, and as slow for an unknown user as for
//! a known one.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::auth::{HashParams, PasswordFile, hash_password, verify_password};
use crate::packet::{ConnectReturnCode, Login};

/// Who a CONNECT may be.
pub(crate) struct Authenticator {
    allow_anonymous: bool,
    passwords: Option<PasswordFile>,
    /// The hash an unknown user's password is checked against, with the file's usual cost,
    /// so that the answer takes as long as for a known user.
    dummy: String,
    /// Verifications running at once (each takes a core and `memory_kib` for its time).
    permits: Arc<Semaphore>,
}

/// Whom a CONNECT was accepted as: its user name, if it gave one.
pub(crate) type User = Option<Arc<str>>;

impl Authenticator {
    pub(crate) fn new(
        allow_anonymous: bool,
        passwords: Option<PasswordFile>,
        params: HashParams,
    ) -> Result<Self, crate::auth::AuthError> {
        let usual = passwords
            .as_ref()
            .and_then(PasswordFile::typical_params)
            .unwrap_or(params);
        let dummy = match &passwords {
            Some(_) => hash_password(b"no such user: this hash is never matched", usual)?,
            None => String::new(),
        };
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Ok(Self {
            allow_anonymous,
            passwords,
            dummy,
            permits: Arc::new(Semaphore::new(cores)),
        })
    }

    /// Whether a CONNECT with `login` may connect: the user name it is accepted as, or the
    /// CONNACK return code that refuses it (0x05 without a user name when anonymous clients
    /// are not allowed, or with one but no password file to check it; 0x04 for a user name and
    /// password that the password file does not have).
    pub(crate) async fn check(&self, login: Option<&Login>) -> Result<User, ConnectReturnCode> {
        let Some(login) = login else {
            return if self.allow_anonymous {
                Ok(None)
            } else {
                Err(ConnectReturnCode::NotAuthorized)
            };
        };
        let user: Arc<str> = Arc::from(login.username.as_str());
        let Some(passwords) = &self.passwords else {
            // Nothing to check a user name against: it is as good as none.
            return if self.allow_anonymous {
                Ok(Some(user))
            } else {
                Err(ConnectReturnCode::NotAuthorized)
            };
        };
        let known = passwords.get(&user);
        let hash = known.unwrap_or(&self.dummy).to_owned();
        let password = login.password.clone().unwrap_or_default();
        let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
            return Err(ConnectReturnCode::ServerUnavailable);
        };
        let matched = tokio::task::spawn_blocking(move || {
            let matched = verify_password(&password, &hash);
            drop(permit);
            matched
        })
        .await
        .unwrap_or(false);
        if matched && known.is_some() && login.password.is_some() {
            Ok(Some(user))
        } else {
            Err(ConnectReturnCode::BadUserNameOrPassword)
        }
    }
}
