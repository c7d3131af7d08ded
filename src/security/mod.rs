//! Layer 3: who may do what, and the record of what they did.
//!
//! - [`accounts`]: accounts with a role ([`Role`]), Argon2id passwords ([`password`]) of a
//!   minimum strength, sign-in with lockout after repeated failures;
//! - [`sessions`]: browser sessions (cookie id stored hashed, CSRF token, idle and absolute
//!   timeouts, rotated at sign-in);
//! - [`tokens`]: API bearer tokens, shown once, stored hashed, revocable, expiring;
//! - [`audit_log`]: the append-only, hash-chained audit trail with a signed head;
//! - [`keys`]: the deployment's AES-256-GCM key (kept outside the database) that seals stored
//!   scans and signs the audit head.
//!
//! The web layer decides which role each route needs; this layer knows nothing of HTTP.

pub mod accounts;
pub mod audit_log;
pub mod keys;
pub mod password;
pub mod sessions;
pub mod tokens;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::core::error::AccessError;

/// What an account may do. Each role may do everything the ones below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads analyses, batches, the model card.
    Viewer,
    /// Also analyses scans and gives feedback.
    Clinician,
    /// Also manages accounts, tokens, the audit trail, deletions and the PACS queue.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Clinician, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Clinician => "clinician",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = AccessError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| AccessError::NoSuchRole(s.to_string()))
    }
}

/// 256 random bits, URL-safe base64 without padding (43 characters).
pub fn random_secret() -> String {
    use base64::Engine as _;
    use rand::TryRngCore;
    let mut bytes = [0u8; 32];
    // The operating system's generator; if it fails, no secret can be made safely.
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random number generator works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// SHA-256 of `text`, hex.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_parsed() {
        assert!(Role::Admin > Role::Clinician && Role::Clinician > Role::Viewer);
        assert_eq!("clinician".parse::<Role>().unwrap(), Role::Clinician);
        assert!("stage".parse::<Role>().is_err());
    }

    #[tokio::test]
    async fn accounts_lock_after_repeated_failures_and_tokens_revoke() {
        let pool = crate::database::open("sqlite::memory:").await.unwrap();
        let pw = "correct horse battery staple";
        assert!(!accounts::any(&pool).await.unwrap());
        accounts::add(&pool, "alice", Role::Clinician, pw, 0)
            .await
            .unwrap();
        assert!(accounts::any(&pool).await.unwrap());
        assert!(matches!(
            accounts::add(&pool, "bob", Role::Viewer, "short", 0).await,
            Err(AccessError::WeakPassword(_))
        ));
        use accounts::SignIn;
        assert!(matches!(
            accounts::sign_in(&pool, "alice", pw, 10).await.unwrap(),
            SignIn::Accepted(_)
        ));
        for _ in 0..accounts::MAX_FAILED_LOGINS - 1 {
            assert_eq!(
                accounts::sign_in(&pool, "alice", "wrong password!!", 10)
                    .await
                    .unwrap(),
                SignIn::Refused
            );
        }
        let locked = accounts::sign_in(&pool, "alice", "wrong password!!", 10)
            .await
            .unwrap();
        assert!(matches!(locked, SignIn::Locked { .. }), "{locked:?}");
        // Locked: even the right password is refused, until the lock ends.
        assert!(matches!(
            accounts::sign_in(&pool, "alice", pw, 20).await.unwrap(),
            SignIn::Locked { .. }
        ));
        assert!(matches!(
            accounts::sign_in(&pool, "alice", pw, 11 + accounts::LOCKOUT_SECONDS)
                .await
                .unwrap(),
            SignIn::Accepted(_)
        ));

        let (info, token) = tokens::create(&pool, "alice", Some(1), "ci", 0)
            .await
            .unwrap();
        assert_eq!(tokens::id_of(&token), info.id);
        let user = tokens::authenticate(&pool, &token, 5)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(user.role, Role::Clinician);
        assert!(
            tokens::authenticate(&pool, &token, 86_400)
                .await
                .unwrap()
                .is_none(),
            "expired"
        );
        let forged = format!("{}x", &token[..token.len() - 1]);
        assert!(
            tokens::authenticate(&pool, &forged, 5)
                .await
                .unwrap()
                .is_none()
        );
        tokens::revoke(&pool, &info.id, 6).await.unwrap();
        assert!(
            tokens::authenticate(&pool, &token, 7)
                .await
                .unwrap()
                .is_none(),
            "revoked"
        );
    }
}
