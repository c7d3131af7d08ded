//! API tokens: `olt_<id>_<secret>`, shown once when made. The database keeps the id (public,
//! for listing and revoking) and SHA-256 of the secret (256 random bits, so a fast hash is
//! enough). A token acts with its account's role, and stops working when revoked, expired, or
//! when its account is disabled.

use serde::Serialize;
use sqlx::Row;

use crate::database::Pool;

use super::accounts::{self, User};
use super::{random_secret, sha256_hex};
use crate::core::error::{AccessError, StoreError};

/// A token as listed (never its secret).
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub user: String,
    pub label: String,
    pub created_unix: i64,
    pub expires_unix: Option<i64>,
    pub revoked_unix: Option<i64>,
    pub last_used_unix: Option<i64>,
}

fn store(e: sqlx::Error) -> AccessError {
    AccessError::Store(StoreError::Query(e))
}

/// Makes a token for `user_name`, valid for `days` (forever when `None`); returns it with the
/// full token text, which is not kept.
pub async fn create(
    pool: &Pool,
    user_name: &str,
    days: Option<u32>,
    label: &str,
    now: i64,
) -> Result<(TokenInfo, String), AccessError> {
    let user = accounts::find(pool, user_name).await?;
    if user.disabled {
        return Err(AccessError::Disabled(user.name));
    }
    // Hex, so that the id never holds the `_` that separates it from the secret.
    let id = super::sha256_hex(&random_secret())[..16].to_string();
    let secret = random_secret();
    let expires = days.map(|d| now + i64::from(d) * 86_400);
    sqlx::query(
        "INSERT INTO api_tokens (id, user_id, secret_sha256, label, created_unix, expires_unix) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(user.id)
    .bind(sha256_hex(&secret))
    .bind(label)
    .bind(now)
    .bind(expires)
    .execute(pool)
    .await
    .map_err(store)?;
    let info = TokenInfo {
        id: id.clone(),
        user: user.name,
        label: label.to_string(),
        created_unix: now,
        expires_unix: expires,
        revoked_unix: None,
        last_used_unix: None,
    };
    Ok((info, format!("olt_{id}_{secret}")))
}

/// The token's id, from the id itself or from the whole token.
pub fn id_of(token_or_id: &str) -> &str {
    token_or_id
        .strip_prefix("olt_")
        .and_then(|rest| rest.split('_').next())
        .unwrap_or(token_or_id)
}

/// The account a bearer token acts for, if the token is valid now.
pub async fn authenticate(pool: &Pool, token: &str, now: i64) -> Result<Option<User>, AccessError> {
    let Some((id, secret)) = token
        .strip_prefix("olt_")
        .and_then(|rest| rest.split_once('_'))
    else {
        return Ok(None);
    };
    let Some(row) = sqlx::query(
        "SELECT user_id, secret_sha256, expires_unix, revoked_unix FROM api_tokens WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(store)?
    else {
        return Ok(None);
    };
    let stored: String = row.get("secret_sha256");
    let matches: bool =
        subtle::ConstantTimeEq::ct_eq(stored.as_bytes(), sha256_hex(secret).as_bytes()).into();
    let expired = row
        .get::<Option<i64>, _>("expires_unix")
        .is_some_and(|at| at <= now);
    let revoked = row.get::<Option<i64>, _>("revoked_unix").is_some();
    if !matches || expired || revoked {
        return Ok(None);
    }
    let user = accounts::by_id(pool, row.get("user_id")).await?;
    let Some(user) = user.filter(|u| !u.disabled) else {
        return Ok(None);
    };
    sqlx::query("UPDATE api_tokens SET last_used_unix = $1 WHERE id = $2")
        .bind(now)
        .bind(id)
        .execute(pool)
        .await
        .map_err(store)?;
    Ok(Some(user))
}

/// Revokes a token (by id or whole token); revoking twice is not an error.
pub async fn revoke(pool: &Pool, token_or_id: &str, now: i64) -> Result<String, AccessError> {
    let id = id_of(token_or_id);
    let done = sqlx::query(
        "UPDATE api_tokens SET revoked_unix = COALESCE(revoked_unix, $1) WHERE id = $2",
    )
    .bind(now)
    .bind(id)
    .execute(pool)
    .await
    .map_err(store)?;
    if done.rows_affected() == 0 {
        return Err(AccessError::NoSuchToken(id.to_string()));
    }
    Ok(id.to_string())
}

/// Every token, newest first.
pub async fn list(pool: &Pool) -> Result<Vec<TokenInfo>, AccessError> {
    let rows = sqlx::query(
        "SELECT t.id, u.name, t.label, t.created_unix, t.expires_unix, t.revoked_unix, \
         t.last_used_unix FROM api_tokens t JOIN users u ON u.id = t.user_id \
         ORDER BY t.created_unix DESC, t.id",
    )
    .fetch_all(pool)
    .await
    .map_err(store)?;
    Ok(rows
        .iter()
        .map(|r| TokenInfo {
            id: r.get(0),
            user: r.get(1),
            label: r.get(2),
            created_unix: r.get(3),
            expires_unix: r.get(4),
            revoked_unix: r.get(5),
            last_used_unix: r.get(6),
        })
        .collect())
}
