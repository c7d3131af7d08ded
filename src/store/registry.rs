//! The model registry's rows: the model versions a deployment knows (each a copy in its models
//! folder) and the history of promotions. The served version is the newest promotion not rolled
//! back; with none, the server serves the model it was started with.

use serde::Serialize;
use sqlx::Row;

use crate::database::Pool;

use super::db_err;
use crate::core::error::{RegistryError, Result};

/// One registered model version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelVersion {
    /// First 12 hex digits of the weights' SHA-256 (what analyses record as the model version).
    pub version: String,
    pub name: String,
    /// The version it was fine-tuned from.
    pub parent: Option<String>,
    /// The model file's folder.
    pub directory: String,
    pub data_fingerprint: String,
    pub feedback_fingerprint: Option<String>,
    /// The model file's validation figures (JSON).
    pub metrics: serde_json::Value,
    pub registered_unix: i64,
}

/// A promotion: which version, when, by whom, and the comparison that allowed it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Promotion {
    pub id: i64,
    pub version: String,
    pub promoted_unix: i64,
    pub promoted_by: String,
    pub comparison: Option<serde_json::Value>,
    pub rolled_back_unix: Option<i64>,
}

pub async fn register(pool: &Pool, v: &ModelVersion) -> Result<()> {
    if get(pool, &v.version).await?.is_some() {
        return Err(RegistryError::AlreadyRegistered(v.version.clone()).into());
    }
    sqlx::query(
        "INSERT INTO model_versions (version, name, parent, directory, data_fingerprint, \
         feedback_fingerprint, metrics, registered_unix) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&v.version)
    .bind(&v.name)
    .bind(&v.parent)
    .bind(&v.directory)
    .bind(&v.data_fingerprint)
    .bind(&v.feedback_fingerprint)
    .bind(v.metrics.to_string())
    .bind(v.registered_unix)
    .execute(pool)
    .await
    .map_err(db_err)?;
    Ok(())
}

fn to_version(r: &crate::database::Row) -> Result<ModelVersion> {
    let metrics: String = r.try_get("metrics").map_err(db_err)?;
    Ok(ModelVersion {
        version: r.try_get("version").map_err(db_err)?,
        name: r.try_get("name").map_err(db_err)?,
        parent: r.try_get("parent").map_err(db_err)?,
        directory: r.try_get("directory").map_err(db_err)?,
        data_fingerprint: r.try_get("data_fingerprint").map_err(db_err)?,
        feedback_fingerprint: r.try_get("feedback_fingerprint").map_err(db_err)?,
        metrics: serde_json::from_str(&metrics).map_err(db_err)?,
        registered_unix: r.try_get("registered_unix").map_err(db_err)?,
    })
}

pub async fn get(pool: &Pool, version: &str) -> Result<Option<ModelVersion>> {
    let row = sqlx::query("SELECT * FROM model_versions WHERE version = $1")
        .bind(version)
        .fetch_optional(pool)
        .await
        .map_err(db_err)?;
    row.as_ref().map(to_version).transpose()
}

/// Every registered version, oldest first.
pub async fn list(pool: &Pool) -> Result<Vec<ModelVersion>> {
    let rows = sqlx::query("SELECT * FROM model_versions ORDER BY registered_unix, version")
        .fetch_all(pool)
        .await
        .map_err(db_err)?;
    rows.iter().map(to_version).collect()
}

fn to_promotion(r: &crate::database::Row) -> Result<Promotion> {
    let comparison: Option<String> = r.try_get("comparison").map_err(db_err)?;
    Ok(Promotion {
        id: r.try_get("id").map_err(db_err)?,
        version: r.try_get("version").map_err(db_err)?,
        promoted_unix: r.try_get("promoted_unix").map_err(db_err)?,
        promoted_by: r.try_get("promoted_by").map_err(db_err)?,
        comparison: match comparison {
            Some(c) => Some(serde_json::from_str(&c).map_err(db_err)?),
            None => None,
        },
        rolled_back_unix: r.try_get("rolled_back_unix").map_err(db_err)?,
    })
}

/// The promotion in force: the newest not rolled back (`None`: the server's own model).
pub async fn served(pool: &Pool) -> Result<Option<Promotion>> {
    let row = sqlx::query(
        "SELECT * FROM model_promotions WHERE rolled_back_unix IS NULL ORDER BY id DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await
    .map_err(db_err)?;
    row.as_ref().map(to_promotion).transpose()
}

/// Every promotion, oldest first.
pub async fn promotions(pool: &Pool) -> Result<Vec<Promotion>> {
    let rows = sqlx::query("SELECT * FROM model_promotions ORDER BY id")
        .fetch_all(pool)
        .await
        .map_err(db_err)?;
    rows.iter().map(to_promotion).collect()
}

/// Records the promotion of a registered `version`; returns its id.
pub async fn promote(
    pool: &Pool,
    version: &str,
    by: &str,
    comparison: Option<&serde_json::Value>,
    now: i64,
) -> Result<i64> {
    if get(pool, version).await?.is_none() {
        return Err(RegistryError::UnknownVersion(version.to_string()).into());
    }
    sqlx::query_scalar(
        "INSERT INTO model_promotions (version, promoted_unix, promoted_by, comparison) \
         VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(version)
    .bind(now)
    .bind(by)
    .bind(comparison.map(|c| c.to_string()))
    .fetch_one(pool)
    .await
    .map_err(db_err)
}

/// Rolls the promotion in force back; returns the promotion in force afterwards (`None`: the
/// server's own model again). Refused when nothing is promoted.
pub async fn rollback(pool: &Pool, now: i64) -> Result<Option<Promotion>> {
    let mut tx = pool.begin().await.map_err(db_err)?;
    let current: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM model_promotions WHERE rolled_back_unix IS NULL ORDER BY id DESC LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_err)?;
    let Some(current) = current else {
        return Err(RegistryError::NothingToRollBack.into());
    };
    sqlx::query("UPDATE model_promotions SET rolled_back_unix = $1 WHERE id = $2")
        .bind(now)
        .bind(current)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    served(pool).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(v: &str, parent: Option<&str>) -> ModelVersion {
        ModelVersion {
            version: v.into(),
            name: "m".into(),
            parent: parent.map(str::to_string),
            directory: format!("/models/{v}"),
            data_fingerprint: "f".into(),
            feedback_fingerprint: None,
            metrics: serde_json::json!({"accuracy": 0.9}),
            registered_unix: 1,
        }
    }

    #[tokio::test]
    async fn promotions_stack_and_roll_back() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("r.db").display());
        let pool = crate::database::open(&url).await.unwrap();
        register(&pool, &version("aaa", None)).await.unwrap();
        register(&pool, &version("bbb", Some("aaa"))).await.unwrap();
        assert!(register(&pool, &version("aaa", None)).await.is_err());
        assert_eq!(list(&pool).await.unwrap().len(), 2);
        assert!(served(&pool).await.unwrap().is_none());
        assert!(promote(&pool, "zzz", "alice", None, 2).await.is_err());
        promote(&pool, "aaa", "alice", None, 2).await.unwrap();
        promote(&pool, "bbb", "alice", None, 3).await.unwrap();
        assert_eq!(served(&pool).await.unwrap().unwrap().version, "bbb");
        let back = rollback(&pool, 4).await.unwrap().unwrap();
        assert_eq!(back.version, "aaa");
        assert!(rollback(&pool, 5).await.unwrap().is_none());
        assert!(rollback(&pool, 6).await.is_err());
        let all = promotions(&pool).await.unwrap();
        assert!(all.iter().all(|p| p.rolled_back_unix.is_some()));
    }
}
