//! Browser sessions: a random 256-bit id in an HttpOnly cookie (the database keeps its SHA-256
//! only), a CSRF token bound to it, an idle and an absolute timeout. A sign-in always makes a
//! new session (the id is rotated), so an id planted before sign-in is worth nothing after.

use std::time::Duration;

use sqlx::Row;

use crate::database::Pool;

use super::accounts::{self, User};
use super::{random_secret, sha256_hex};
use crate::core::error::{AccessError, StoreError};

/// The session cookie's name.
pub const COOKIE: &str = "oncolens_session";

/// How long a session lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPolicy {
    /// Without a request for this long, the session ends.
    pub idle: Duration,
    /// However active, the session ends this long after sign-in.
    pub absolute: Duration,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(30 * 60),
            absolute: Duration::from_secs(12 * 3600),
        }
    }
}

/// A live session: whose, and the token its forms must carry.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: User,
    pub csrf: String,
}

fn store(e: sqlx::Error) -> AccessError {
    AccessError::Store(StoreError::Query(e))
}

/// Starts a session for `user`; returns the cookie value and the CSRF token.
pub async fn start(pool: &Pool, user: &User, now: i64) -> Result<(String, String), AccessError> {
    let id = random_secret();
    let csrf = random_secret();
    sqlx::query(
        "INSERT INTO sessions (id_sha256, user_id, csrf, created_unix, last_seen_unix) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(sha256_hex(&id))
    .bind(user.id)
    .bind(&csrf)
    .bind(now)
    .bind(now)
    .execute(pool)
    .await
    .map_err(store)?;
    Ok((id, csrf))
}

/// The live session behind a cookie value (its idle clock restarts), or `None` when there is
/// none, it timed out (then it is deleted), or its account is disabled.
pub async fn resume(
    pool: &Pool,
    cookie: &str,
    now: i64,
    policy: SessionPolicy,
) -> Result<Option<Session>, AccessError> {
    let key = sha256_hex(cookie);
    let Some(row) = sqlx::query(
        "SELECT user_id, csrf, created_unix, last_seen_unix FROM sessions WHERE id_sha256 = $1",
    )
    .bind(&key)
    .fetch_optional(pool)
    .await
    .map_err(store)?
    else {
        return Ok(None);
    };
    let created: i64 = row.get("created_unix");
    let seen: i64 = row.get("last_seen_unix");
    let expired = now - seen > policy.idle.as_secs() as i64
        || now - created > policy.absolute.as_secs() as i64;
    let user = accounts::by_id(pool, row.get("user_id")).await?;
    match user {
        Some(user) if !expired && !user.disabled => {
            // The idle clock moves in steps of a tenth of the idle timeout (at most a minute),
            // so that a page and its images do not each write.
            let step = (policy.idle.as_secs() as i64 / 10).clamp(1, 60);
            if now - seen >= step {
                sqlx::query("UPDATE sessions SET last_seen_unix = $1 WHERE id_sha256 = $2")
                    .bind(now)
                    .bind(&key)
                    .execute(pool)
                    .await
                    .map_err(store)?;
            }
            Ok(Some(Session {
                user,
                csrf: row.get("csrf"),
            }))
        }
        _ => {
            end(pool, cookie).await?;
            Ok(None)
        }
    }
}

/// Ends the session behind a cookie value (sign-out).
pub async fn end(pool: &Pool, cookie: &str) -> Result<(), AccessError> {
    sqlx::query("DELETE FROM sessions WHERE id_sha256 = $1")
        .bind(sha256_hex(cookie))
        .execute(pool)
        .await
        .map_err(store)?;
    Ok(())
}

/// Deletes the sessions that have timed out.
pub async fn sweep(pool: &Pool, now: i64, policy: SessionPolicy) -> Result<u64, AccessError> {
    sqlx::query("DELETE FROM sessions WHERE last_seen_unix < $1 OR created_unix < $2")
        .bind(now - policy.idle.as_secs() as i64)
        .bind(now - policy.absolute.as_secs() as i64)
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
        .map_err(store)
}
