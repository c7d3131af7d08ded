//! The watcher's state in the database (`pacs_series`, migration 0005): which series are done,
//! which failed and when to try again, which are parked. Keys are hashes, never UIDs.

use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::database::Pool;

use crate::core::error::PacsError;

/// Attempts before a series is parked.
pub const MAX_ATTEMPTS: i64 = 5;
/// First retry delay, doubled on each further failure (capped at an hour).
pub const FIRST_RETRY_S: i64 = 30;

fn state_err(e: sqlx::Error) -> PacsError {
    PacsError::State(Box::new(e))
}

/// The key of a series of a PACS: SHA-256 of the three, hex.
pub fn series_key(pacs: &str, study: &str, series: &str) -> String {
    let d = Sha256::new()
        .chain_update(pacs.as_bytes())
        .chain_update(b"\0")
        .chain_update(study.as_bytes())
        .chain_update(b"\0")
        .chain_update(series.as_bytes())
        .finalize();
    hex::encode(d)
}

/// What the state says about a series now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Never seen, or a failure whose retry time has come.
    Yes,
    /// Done, parked, or waiting for its retry time.
    No,
}

pub async fn due(pool: &Pool, key: &str, now: i64) -> Result<Due, PacsError> {
    let row = sqlx::query("SELECT state, next_attempt_unix FROM pacs_series WHERE key = $1")
        .bind(key)
        .fetch_optional(pool)
        .await
        .map_err(state_err)?;
    Ok(match row {
        None => Due::Yes,
        Some(r) => {
            let state: String = r.try_get("state").map_err(state_err)?;
            let next: i64 = r.try_get("next_attempt_unix").map_err(state_err)?;
            if state == "failed" && next <= now {
                Due::Yes
            } else {
                Due::No
            }
        }
    })
}

pub async fn mark_done(
    pool: &Pool,
    key: &str,
    slices: usize,
    finding: &str,
    now: i64,
) -> Result<(), PacsError> {
    sqlx::query(
        "INSERT INTO pacs_series (key, state, attempts, next_attempt_unix, last_error, slices, finding, updated_unix) \
         VALUES ($1, 'done', COALESCE((SELECT attempts FROM pacs_series WHERE key = $2), 0) + 1, 0, '', $3, $4, $5) \
         ON CONFLICT (key) DO UPDATE SET state = 'done', attempts = excluded.attempts, last_error = '', \
         slices = excluded.slices, finding = excluded.finding, updated_unix = excluded.updated_unix",
    )
    .bind(key)
    .bind(key)
    .bind(slices as i64)
    .bind(finding)
    .bind(now)
    .execute(pool)
    .await
    .map_err(state_err)?;
    Ok(())
}

/// Records a failure: retried later with back-off, parked after [`MAX_ATTEMPTS`]. Returns
/// whether the series is now parked.
pub async fn mark_failed(pool: &Pool, key: &str, error: &str, now: i64) -> Result<bool, PacsError> {
    let attempts: i64 = sqlx::query("SELECT attempts FROM pacs_series WHERE key = $1")
        .bind(key)
        .fetch_optional(pool)
        .await
        .map_err(state_err)?
        .map(|r| r.try_get("attempts"))
        .transpose()
        .map_err(state_err)?
        .unwrap_or(0)
        + 1;
    let parked = attempts >= MAX_ATTEMPTS;
    let delay = (FIRST_RETRY_S << (attempts - 1).min(7)).min(3600);
    sqlx::query(
        "INSERT INTO pacs_series (key, state, attempts, next_attempt_unix, last_error, updated_unix) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (key) DO UPDATE SET state = excluded.state, attempts = excluded.attempts, \
         next_attempt_unix = excluded.next_attempt_unix, last_error = excluded.last_error, \
         updated_unix = excluded.updated_unix",
    )
    .bind(key)
    .bind(if parked { "parked" } else { "failed" })
    .bind(attempts)
    .bind(now + delay)
    .bind(error)
    .bind(now)
    .execute(pool)
    .await
    .map_err(state_err)?;
    Ok(parked)
}

/// Releases a parked or failed series for the next poll (its attempts start again). Returns
/// whether a series had that key.
pub async fn release(pool: &Pool, key: &str, now: i64) -> Result<bool, PacsError> {
    let r = sqlx::query(
        "UPDATE pacs_series SET state = 'failed', attempts = 0, next_attempt_unix = $1, updated_unix = $2 \
         WHERE key = $3 AND state != 'done'",
    )
    .bind(now)
    .bind(now)
    .bind(key)
    .execute(pool)
    .await
    .map_err(state_err)?;
    Ok(r.rows_affected() == 1)
}

/// A series that failed, for the web app.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FailedSeries {
    pub key: String,
    pub state: String,
    pub attempts: i64,
    pub next_attempt_unix: i64,
    pub last_error: String,
    pub updated_unix: i64,
}

/// Failed and parked series, newest first.
pub async fn failures(pool: &Pool) -> Result<Vec<FailedSeries>, PacsError> {
    let rows = sqlx::query(
        "SELECT key, state, attempts, next_attempt_unix, last_error, updated_unix FROM pacs_series \
         WHERE state != 'done' ORDER BY updated_unix DESC LIMIT 200",
    )
    .fetch_all(pool)
    .await
    .map_err(state_err)?;
    rows.iter()
        .map(|r| {
            Ok(FailedSeries {
                key: r.try_get("key").map_err(state_err)?,
                state: r.try_get("state").map_err(state_err)?,
                attempts: r.try_get("attempts").map_err(state_err)?,
                next_attempt_unix: r.try_get("next_attempt_unix").map_err(state_err)?,
                last_error: r.try_get("last_error").map_err(state_err)?,
                updated_unix: r.try_get("updated_unix").map_err(state_err)?,
            })
        })
        .collect()
}

/// Series done so far.
pub async fn done_count(pool: &Pool) -> Result<i64, PacsError> {
    sqlx::query("SELECT COUNT(*) AS n FROM pacs_series WHERE state = 'done'")
        .fetch_one(pool)
        .await
        .and_then(|r| r.try_get("n"))
        .map_err(state_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failures_back_off_then_park_and_done_is_final() {
        let db = crate::database::open("sqlite::memory:").await.unwrap();
        let key = series_key("http://pacs/dicom-web", "1.2.3", "1.2.3.4");
        assert_eq!(key.len(), 64);
        assert_eq!(due(&db, &key, 0).await.unwrap(), Due::Yes);
        let mut now = 1_000;
        for attempt in 1..=MAX_ATTEMPTS {
            assert_eq!(
                due(&db, &key, now).await.unwrap(),
                Due::Yes,
                "attempt {attempt}"
            );
            let parked = mark_failed(&db, &key, "the PACS answered HTTP 500", now)
                .await
                .unwrap();
            assert_eq!(parked, attempt == MAX_ATTEMPTS);
            // Not before the back-off: 30 s, then 60, 120, ...
            let delay = FIRST_RETRY_S << (attempt - 1);
            assert_eq!(due(&db, &key, now + delay - 1).await.unwrap(), Due::No);
            now += delay;
        }
        // Parked: never due again on its own, and listed for the web app.
        assert_eq!(due(&db, &key, now + 1_000_000).await.unwrap(), Due::No);
        let f = failures(&db).await.unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].state.as_str(), f[0].attempts),
            ("parked", MAX_ATTEMPTS)
        );
        // A different series done is final and counted.
        let other = series_key("http://pacs/dicom-web", "1.2.3", "1.2.3.5");
        mark_done(&db, &other, 20, "Glioma", now).await.unwrap();
        assert_eq!(due(&db, &other, now + 1_000_000).await.unwrap(), Due::No);
        assert_eq!(done_count(&db).await.unwrap(), 1);
    }
}
