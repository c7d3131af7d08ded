//! Accounts: a name, a role, an Argon2id password hash; sign-in with lockout after repeated
//! failures. Every change here is written to the audit trail by the caller (who knows the actor
//! and the address).

use serde::Serialize;
use sqlx::Row;

use crate::database::Pool;

use super::Role;
use super::password;
use crate::core::error::{AccessError, StoreError};

/// Failed sign-ins in a row that lock an account.
pub const MAX_FAILED_LOGINS: i64 = 5;
/// How long a locked account stays locked.
pub const LOCKOUT_SECONDS: i64 = 15 * 60;

/// An account as the rest of the system sees it (no hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub disabled: bool,
    pub created_unix: i64,
    pub locked_until_unix: i64,
}

fn store(e: sqlx::Error) -> AccessError {
    AccessError::Store(StoreError::Query(e))
}

fn user_of(row: &crate::database::Row) -> Result<User, AccessError> {
    let role: String = row.get("role");
    Ok(User {
        id: row.get("id"),
        name: row.get("name"),
        role: role.parse()?,
        disabled: row.get::<i64, _>("disabled") != 0,
        created_unix: row.get("created_unix"),
        locked_until_unix: row.get("locked_until_unix"),
    })
}

const USER_COLUMNS: &str = "id, name, role, disabled, created_unix, locked_until_unix";

fn check_name(name: &str) -> Result<(), AccessError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(AccessError::BadName(name.to_string()))
    }
}

async fn hash_checked(name: &str, password: &str) -> Result<String, AccessError> {
    if let Some(why) = password::weakness(name, password) {
        return Err(AccessError::WeakPassword(why));
    }
    let password = password.to_string();
    tokio::task::spawn_blocking(move || password::hash(&password))
        .await
        .map_err(|e| AccessError::Hash(e.to_string()))?
}

/// Ends every session of an account (disabled, or its password changed).
async fn end_sessions(pool: &Pool, user_id: i64) -> Result<(), AccessError> {
    sqlx::query("DELETE FROM sessions WHERE user_id = $1")
        .bind(user_id)
        .execute(pool)
        .await
        .map_err(store)?;
    Ok(())
}

/// Whether any account exists (then every request must authenticate).
pub async fn any(pool: &Pool) -> Result<bool, AccessError> {
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM (SELECT 1 FROM users LIMIT 1) AS one")
        .fetch_one(pool)
        .await
        .map(|n| n != 0)
        .map_err(store)
}

/// Adds an account.
pub async fn add(
    pool: &Pool,
    name: &str,
    role: Role,
    password: &str,
    now: i64,
) -> Result<User, AccessError> {
    check_name(name)?;
    let hash = hash_checked(name, password).await?;
    let result = sqlx::query(
        "INSERT INTO users (name, role, password_hash, created_unix, password_changed_unix) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(name)
    .bind(role.as_str())
    .bind(hash)
    .bind(now)
    .bind(now)
    .execute(pool)
    .await;
    match result {
        Ok(_) => find(pool, name).await,
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            Err(AccessError::UserExists(name.to_string()))
        }
        Err(e) => Err(store(e)),
    }
}

/// The account `name`.
pub async fn find(pool: &Pool, name: &str) -> Result<User, AccessError> {
    let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE name = $1"))
        .bind(name)
        .fetch_optional(pool)
        .await
        .map_err(store)?
        .ok_or_else(|| AccessError::NoSuchUser(name.to_string()))?;
    user_of(&row)
}

/// The account with id `id`, if it exists.
pub async fn by_id(pool: &Pool, id: i64) -> Result<Option<User>, AccessError> {
    let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(store)?;
    row.as_ref().map(user_of).transpose()
}

/// All accounts, by name.
pub async fn list(pool: &Pool) -> Result<Vec<User>, AccessError> {
    let rows = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY name"))
        .fetch_all(pool)
        .await
        .map_err(store)?;
    rows.iter().map(user_of).collect()
}

/// Disables (or re-enables) an account; a disabled account's sessions end and its tokens stop
/// working.
pub async fn set_disabled(pool: &Pool, name: &str, disabled: bool) -> Result<User, AccessError> {
    let user = find(pool, name).await?;
    sqlx::query("UPDATE users SET disabled = $1 WHERE id = $2")
        .bind(i64::from(disabled))
        .bind(user.id)
        .execute(pool)
        .await
        .map_err(store)?;
    if disabled {
        end_sessions(pool, user.id).await?;
    }
    find(pool, name).await
}

/// Sets a new password; ends the account's sessions and lifts a lockout.
pub async fn reset_password(
    pool: &Pool,
    name: &str,
    password: &str,
    now: i64,
) -> Result<User, AccessError> {
    let user = find(pool, name).await?;
    let hash = hash_checked(name, password).await?;
    sqlx::query(
        "UPDATE users SET password_hash = $1, password_changed_unix = $2, failed_logins = 0, \
         locked_until_unix = 0 WHERE id = $3",
    )
    .bind(hash)
    .bind(now)
    .bind(user.id)
    .execute(pool)
    .await
    .map_err(store)?;
    end_sessions(pool, user.id).await?;
    find(pool, name).await
}

/// What a sign-in attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignIn {
    Accepted(User),
    /// Wrong name or password (the two are not told apart).
    Refused,
    /// Too many failures: refused, even with the right password, until the given time.
    Locked {
        until_unix: i64,
    },
    Disabled,
}

/// Checks a name and password; counts failures and locks the account after
/// [`MAX_FAILED_LOGINS`] in a row.
pub async fn sign_in(
    pool: &Pool,
    name: &str,
    password: &str,
    now: i64,
) -> Result<SignIn, AccessError> {
    let row = sqlx::query(&format!(
        "SELECT {USER_COLUMNS}, password_hash, failed_logins FROM users WHERE name = $1"
    ))
    .bind(name)
    .fetch_optional(pool)
    .await
    .map_err(store)?;
    let verify = |password: String, stored: Option<String>| async move {
        tokio::task::spawn_blocking(move || match stored {
            Some(stored) => password::verify(&password, &stored),
            None => {
                password::dummy_verify(&password);
                false
            }
        })
        .await
        .unwrap_or(false)
    };
    let Some(row) = row else {
        verify(password.to_string(), None).await;
        return Ok(SignIn::Refused);
    };
    let user = user_of(&row)?;
    if user.locked_until_unix > now {
        return Ok(SignIn::Locked {
            until_unix: user.locked_until_unix,
        });
    }
    let ok = verify(password.to_string(), Some(row.get("password_hash"))).await;
    if ok && user.disabled {
        return Ok(SignIn::Disabled);
    }
    if ok {
        sqlx::query("UPDATE users SET failed_logins = 0, locked_until_unix = 0 WHERE id = $1")
            .bind(user.id)
            .execute(pool)
            .await
            .map_err(store)?;
        return Ok(SignIn::Accepted(user));
    }
    let failed: i64 = row.get::<i64, _>("failed_logins") + 1;
    if failed >= MAX_FAILED_LOGINS {
        let until = now + LOCKOUT_SECONDS;
        sqlx::query("UPDATE users SET failed_logins = 0, locked_until_unix = $1 WHERE id = $2")
            .bind(until)
            .bind(user.id)
            .execute(pool)
            .await
            .map_err(store)?;
        return Ok(SignIn::Locked { until_unix: until });
    }
    sqlx::query("UPDATE users SET failed_logins = $1 WHERE id = $2")
        .bind(failed)
        .bind(user.id)
        .execute(pool)
        .await
        .map_err(store)?;
    Ok(SignIn::Refused)
}
