//! Passwords: Argon2id hashes in PHC strings (salt and parameters inside), and the minimum
//! strength an account's password must have.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::core::error::AccessError;

/// Shortest password accepted (NIST SP 800-63B asks for at least 8; we ask more of accounts
/// that open patients' scans).
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest (Argon2 takes any length; this bounds the work one login attempt can cause).
pub const MAX_PASSWORD_CHARS: usize = 256;

/// Argon2id with OWASP's recommended floor (19 MiB, 2 passes, 1 lane).
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("valid Argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Passwords seen most in breaches, and words a hospital's would be built from.
const COMMON: &[&str] = &[
    "password",
    "123456",
    "qwerty",
    "letmein",
    "welcome",
    "admin",
    "iloveyou",
    "monkey",
    "dragon",
    "football",
    "baseball",
    "sunshine",
    "princess",
    "abc123",
    "111111",
    "oncolens",
    "hospital",
    "radiology",
    "clinician",
    "doctor",
    "changeme",
    "secret",
];

/// Why `password` is too weak for the account `name`, if it is.
pub fn weakness(name: &str, password: &str) -> Option<String> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Some(format!(
            "it has {chars} characters; use at least {MIN_PASSWORD_CHARS}"
        ));
    }
    if chars > MAX_PASSWORD_CHARS {
        return Some(format!("it is longer than {MAX_PASSWORD_CHARS} characters"));
    }
    let lower = password.to_lowercase();
    let mut distinct: Vec<char> = lower.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 5 {
        return Some("it repeats too few different characters".into());
    }
    if !name.is_empty() && lower.contains(&name.to_lowercase()) {
        return Some("it contains the account name".into());
    }
    // A common password with digits or symbols around it is still a common password.
    let core: String = lower.chars().filter(|c| c.is_alphabetic()).collect();
    if COMMON
        .iter()
        .any(|w| core == *w || (core.len() < w.len() + 4 && core.contains(w)))
    {
        return Some("it is built on a well-known password".into());
    }
    if lower
        .as_bytes()
        .windows(2)
        .all(|w| w[1] == w[0].wrapping_add(1))
    {
        return Some("it is a run of consecutive characters".into());
    }
    None
}

/// The Argon2id PHC string of `password`.
pub fn hash(password: &str) -> Result<String, AccessError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccessError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC string `stored` (constant-time comparison inside).
pub fn verify(password: &str, stored: &str) -> bool {
    if password.chars().count() > MAX_PASSWORD_CHARS {
        return false;
    }
    PasswordHash::new(stored)
        .is_ok_and(|h| argon2().verify_password(password.as_bytes(), &h).is_ok())
}

/// A hash that matches no password, verified against when an account does not exist so that
/// the answer takes as long as for one that does (no account enumeration by timing).
pub fn dummy_verify(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let stored = DUMMY.get_or_init(|| hash("an unused dummy password").unwrap_or_default());
    let _ = verify(password, stored);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_passwords_are_named_and_strong_ones_pass() {
        for weak in [
            "short1!",
            "aaaaaaaaaaaaaaaa",
            "Password123456!",
            "alice-is-great-2026",
            "abcdefghijklmnop",
            "Hospital2026!!",
        ] {
            assert!(weakness("alice", weak).is_some(), "{weak}");
        }
        assert_eq!(weakness("alice", "correct horse battery staple"), None);
        assert_eq!(weakness("alice", "Tq8#mV2pL9xw"), None);
    }

    #[test]
    fn hashes_are_argon2id_salted_and_verify() {
        let a = hash("correct horse battery staple").unwrap();
        let b = hash("correct horse battery staple").unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b, "salted");
        assert!(verify("correct horse battery staple", &a));
        assert!(!verify("correct horse battery stapler", &a));
        assert!(!verify("x", "not a hash"));
    }
}
