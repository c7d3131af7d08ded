//! Storage of analyses and feedback in SQL (SQLite embedded by default; the queries are plain
//! SQL so a PostgreSQL pool can follow). Migrations are versioned in `migrations/` and run at
//! start. An analysis is written in one statement inside a transaction: a crash never leaves
//! half of one.

use serde::Serialize;
use sqlx::{Row, SqlitePool as Pool};

use crate::core::error::{Error, Result, StoreError};
use crate::modelfile::GateFinding;

/// Everything stored for one analysis except the images.
#[derive(Debug, Clone, Serialize)]
pub struct AnalysisRecord {
    pub id: String,
    pub created_unix: i64,
    pub filename: String,
    pub model_name: String,
    pub model_version: String,
    pub class_id: String,
    pub class_name: String,
    pub confidence: f64,
    pub uncertain: bool,
    /// `answer`, `uncertain` or `not_brain_mri`.
    pub verdict: String,
    /// Why the input check said "not a brain MRI slice" (empty otherwise).
    pub input_reasons: Vec<String>,
    /// The input gate's finding (`None` in analyses made before the gate).
    pub gate: Option<GateFinding>,
    pub probabilities: Vec<f32>,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct FeedbackRecord {
    pub id: i64,
    pub analysis_id: String,
    pub created_unix: i64,
    pub verdict: String,
    pub class_id: String,
    pub comment: String,
}

fn db_err(e: impl Into<StoreError>) -> Error {
    Error::Store(e.into())
}

/// Opens (creating if missing) and migrates the database at `url`, e.g. `sqlite://oncolens.db`.
pub async fn open(url: &str) -> Result<Pool> {
    crate::database::open(url).await
}

pub async fn ping(pool: &Pool) -> bool {
    sqlx::query("SELECT 1").execute(pool).await.is_ok()
}

pub async fn insert_analysis(
    pool: &Pool,
    a: &AnalysisRecord,
    image_png: &[u8],
    heatmap_png: &[u8],
) -> Result<()> {
    let mut tx = pool.begin().await.map_err(db_err)?;
    insert_analysis_in(&mut tx, a, image_png, heatmap_png, None).await?;
    tx.commit().await.map_err(db_err)
}

/// One analysis inside `tx`, as slice `slice` of a batch when given.
async fn insert_analysis_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    a: &AnalysisRecord,
    image_png: &[u8],
    heatmap_png: &[u8],
    slice: Option<(&str, i64)>,
) -> Result<()> {
    let probabilities = serde_json::to_string(&a.probabilities).map_err(db_err)?;
    let input_reasons = serde_json::to_string(&a.input_reasons).map_err(db_err)?;
    let gate = match &a.gate {
        Some(g) => Some(serde_json::to_string(g).map_err(db_err)?),
        None => None,
    };
    sqlx::query(
        "INSERT INTO analyses (id, created_unix, filename, model_name, model_version, class_id, class_name, \
         confidence, uncertain, verdict, input_reasons, gate, probabilities, width, height, image_png, heatmap_png, \
         batch_id, slice_index) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&a.id)
    .bind(a.created_unix)
    .bind(&a.filename)
    .bind(&a.model_name)
    .bind(&a.model_version)
    .bind(&a.class_id)
    .bind(&a.class_name)
    .bind(a.confidence)
    .bind(a.uncertain)
    .bind(&a.verdict)
    .bind(input_reasons)
    .bind(gate)
    .bind(probabilities)
    .bind(a.width as i64)
    .bind(a.height as i64)
    .bind(image_png)
    .bind(heatmap_png)
    .bind(slice.map(|(b, _)| b))
    .bind(slice.map(|(_, i)| i))
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// A batch of slices: its summaries and errors, and every analysed slice with its two images,
/// in one transaction.
pub struct BatchRecord {
    pub id: String,
    pub created_unix: i64,
    /// JSON array of series summaries (identifiers replaced).
    pub series: serde_json::Value,
    /// JSON array of `{file, error}`.
    pub errors: serde_json::Value,
}

pub async fn insert_batch(
    pool: &Pool,
    batch: &BatchRecord,
    slices: &[(&AnalysisRecord, &[u8], &[u8])],
) -> Result<()> {
    let mut tx = pool.begin().await.map_err(db_err)?;
    sqlx::query("INSERT INTO batches (id, created_unix, series, errors) VALUES (?, ?, ?, ?)")
        .bind(&batch.id)
        .bind(batch.created_unix)
        .bind(batch.series.to_string())
        .bind(batch.errors.to_string())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    for (i, (a, image, heat)) in slices.iter().enumerate() {
        insert_analysis_in(&mut tx, a, image, heat, Some((&batch.id, i as i64))).await?;
    }
    tx.commit().await.map_err(db_err)
}

/// A batch and its analyses in slice order.
pub async fn get_batch(
    pool: &Pool,
    id: &str,
) -> Result<Option<(BatchRecord, Vec<AnalysisRecord>)>> {
    let Some(row) =
        sqlx::query("SELECT id, created_unix, series, errors FROM batches WHERE id = ?")
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(db_err)?
    else {
        return Ok(None);
    };
    let series: String = row.try_get("series").map_err(db_err)?;
    let errors: String = row.try_get("errors").map_err(db_err)?;
    let batch = BatchRecord {
        id: row.try_get("id").map_err(db_err)?,
        created_unix: row.try_get("created_unix").map_err(db_err)?,
        series: serde_json::from_str(&series).map_err(db_err)?,
        errors: serde_json::from_str(&errors).map_err(db_err)?,
    };
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM analyses WHERE batch_id = ? ORDER BY slice_index"
    ))
    .bind(id)
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    let analyses = rows.iter().map(to_record).collect::<Result<Vec<_>>>()?;
    Ok(Some((batch, analyses)))
}

const COLUMNS: &str = "id, created_unix, filename, model_name, model_version, class_id, class_name, confidence, \
                       uncertain, verdict, input_reasons, gate, probabilities, width, height";

fn to_record(row: &sqlx::sqlite::SqliteRow) -> Result<AnalysisRecord> {
    let probabilities: String = row.try_get("probabilities").map_err(db_err)?;
    let input_reasons: String = row.try_get("input_reasons").map_err(db_err)?;
    let gate: Option<String> = row.try_get("gate").map_err(db_err)?;
    Ok(AnalysisRecord {
        id: row.try_get("id").map_err(db_err)?,
        created_unix: row.try_get("created_unix").map_err(db_err)?,
        filename: row.try_get("filename").map_err(db_err)?,
        model_name: row.try_get("model_name").map_err(db_err)?,
        model_version: row.try_get("model_version").map_err(db_err)?,
        class_id: row.try_get("class_id").map_err(db_err)?,
        class_name: row.try_get("class_name").map_err(db_err)?,
        confidence: row.try_get("confidence").map_err(db_err)?,
        uncertain: row.try_get("uncertain").map_err(db_err)?,
        verdict: row.try_get("verdict").map_err(db_err)?,
        input_reasons: serde_json::from_str(&input_reasons).map_err(db_err)?,
        gate: match gate {
            Some(g) => Some(serde_json::from_str(&g).map_err(db_err)?),
            None => None,
        },
        probabilities: serde_json::from_str(&probabilities).map_err(db_err)?,
        width: row.try_get::<i64, _>("width").map_err(db_err)? as u32,
        height: row.try_get::<i64, _>("height").map_err(db_err)? as u32,
    })
}

pub async fn get_analysis(pool: &Pool, id: &str) -> Result<Option<AnalysisRecord>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM analyses WHERE id = ?"))
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(db_err)?;
    row.as_ref().map(to_record).transpose()
}

pub async fn list_analyses(pool: &Pool, limit: i64, offset: i64) -> Result<Vec<AnalysisRecord>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM analyses ORDER BY created_unix DESC, id LIMIT ? OFFSET ?"
    ))
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    rows.iter().map(to_record).collect()
}

/// `which` is `image_png` or `heatmap_png`.
pub async fn get_png(pool: &Pool, id: &str, heatmap: bool) -> Result<Option<Vec<u8>>> {
    let column = if heatmap { "heatmap_png" } else { "image_png" };
    let row = sqlx::query(&format!(
        "SELECT {column} AS png FROM analyses WHERE id = ?"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(db_err)?;
    row.map(|r| r.try_get::<Vec<u8>, _>("png").map_err(db_err))
        .transpose()
}

pub async fn insert_feedback(
    pool: &Pool,
    analysis_id: &str,
    verdict: &str,
    class_id: &str,
    comment: &str,
    now: i64,
) -> Result<i64> {
    let result = sqlx::query(
        "INSERT INTO feedback (analysis_id, created_unix, verdict, class_id, comment) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(analysis_id)
    .bind(now)
    .bind(verdict)
    .bind(class_id)
    .bind(comment)
    .execute(pool)
    .await
    .map_err(db_err)?;
    Ok(result.last_insert_rowid())
}

pub async fn list_feedback(pool: &Pool, analysis_id: &str) -> Result<Vec<FeedbackRecord>> {
    let rows = sqlx::query(
        "SELECT id, analysis_id, created_unix, verdict, class_id, comment FROM feedback WHERE analysis_id = ? ORDER BY id",
    )
    .bind(analysis_id)
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    rows.iter()
        .map(|r| {
            Ok(FeedbackRecord {
                id: r.try_get("id").map_err(db_err)?,
                analysis_id: r.try_get("analysis_id").map_err(db_err)?,
                created_unix: r.try_get("created_unix").map_err(db_err)?,
                verdict: r.try_get("verdict").map_err(db_err)?,
                class_id: r.try_get("class_id").map_err(db_err)?,
                comment: r.try_get("comment").map_err(db_err)?,
            })
        })
        .collect()
}
