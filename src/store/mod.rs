//! Storage of analyses and feedback in SQL (SQLite embedded by default; the queries are plain
//! SQL so a PostgreSQL pool can follow). Migrations are versioned in `migrations/` and run at
//! start. An analysis is written in one statement inside a transaction: a crash never leaves
//! half of one.
//!
//! At rest, what could identify a patient or show their scan is sealed with AES-256-GCM under
//! the deployment's key ([`KeyRing`]): the scan and heat-map PNGs, the file name, the batch's
//! series summaries and errors, and feedback comments. Each value is bound to its row and
//! column, so a sealed value copied elsewhere does not open. The class, confidence and verdict
//! stay in the clear so that lists and metrics need no key; without the image they say nothing
//! about whom.
//!
//! The images of an analysis live in the deployment's object store ([`Objects`]: a folder or an
//! S3 bucket), sealed the same way, under `analyses/<id>/<nonce>/`, which the row names
//! (`object_prefix`); analyses stored before the object store keep theirs in their columns.
//! Objects are written before the row and deleted after it, so a row never names an object
//! that is not there; a failure in between leaves at most sealed objects no row names.

pub mod feedback;
pub mod jobs;
pub mod registry;

use serde::Serialize;
use sqlx::Row;

use crate::database::{Dialect, Pool};
use crate::objects::Objects;

pub use feedback::{
    Agreement, ClassAgreement, FeedbackItem, FeedbackRecord, FeedbackVerdict, MonthAgreement,
    NewFeedback,
};

use crate::core::error::{Error, Result, StoreError};
use crate::modelfile::{GateFinding, PresenceFinding};
use crate::security::keys::KeyRing;

fn seal_text(keys: &KeyRing, context: &str, text: &str) -> Vec<u8> {
    keys.seal(context, text.as_bytes())
}

fn open_text(keys: &KeyRing, context: &str, sealed: &[u8]) -> Result<String> {
    let plain = keys.open(context, sealed)?;
    String::from_utf8(plain)
        .map_err(|_| Error::Key(crate::core::error::KeyError::Tampered(context.to_string())))
}

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
    /// What the model's rule for saying "No tumour" found (`None` in analyses made before the
    /// rule, or by a model without it).
    pub presence: Option<PresenceFinding>,
    pub probabilities: Vec<f32>,
    pub width: u32,
    pub height: u32,
}

/// The images stored with an analysis.
#[derive(Debug, Clone, Copy)]
pub struct StoredImages<'a> {
    /// The scan as shown (grey PNG, longest side at most 1024).
    pub display_png: &'a [u8],
    /// Grad-CAM, coloured RGBA PNG at the display size.
    pub heatmap_png: &'a [u8],
    /// The scan as decoded, at its resolution and bit depth (16-bit grey PNG), for training on
    /// clinicians' feedback.
    pub source_png: Option<&'a [u8]>,
}

/// Predictive entropy of `probabilities`, in bits (0: certain; 2: four classes equally likely).
pub fn entropy_bits(probabilities: &[f32]) -> f64 {
    probabilities
        .iter()
        .map(|&p| f64::from(p))
        .filter(|&p| p > 0.0)
        .map(|p| -p * p.log2())
        .sum()
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

/// The columns an analysis's images were kept in before the object store, which are also the
/// names of its objects and part of their sealing context.
const IMAGE_COLUMNS: [&str; 3] = ["image_png", "heatmap_png", "source_png"];

/// Seals and writes the images of analysis `id`; returns the prefix they are under. A fresh
/// nonce in the prefix means a second write with the same id cannot replace the first's.
async fn put_images(
    objects: &Objects,
    keys: &KeyRing,
    id: &str,
    images: StoredImages<'_>,
) -> Result<String> {
    let prefix = format!("analyses/{id}/{:016x}", rand::random::<u64>());
    let values = [
        Some(images.display_png),
        Some(images.heatmap_png),
        images.source_png,
    ];
    for (column, png) in IMAGE_COLUMNS.into_iter().zip(values) {
        let Some(png) = png else { continue };
        let sealed = keys.seal(&format!("analyses/{id}/{column}"), png);
        if let Err(e) = objects.put(&format!("{prefix}/{column}"), sealed).await {
            delete_images(objects, &prefix).await;
            return Err(e);
        }
    }
    Ok(prefix)
}

/// Deletes the objects under `prefix`, whose row is gone or was never written. A failure is
/// logged, not returned: the analysis is gone already, and what is left is sealed.
async fn delete_images(objects: &Objects, prefix: &str) {
    if let Err(e) = objects.delete_prefix(prefix).await {
        tracing::warn!(
            "objects under {prefix} are left behind: {}",
            crate::core::error::sentence(&e)
        );
    }
}

/// Runs `write` (which stores rows naming the objects under `prefixes`), deleting the objects
/// when it fails.
async fn or_delete_images<T>(
    objects: &Objects,
    prefixes: &[String],
    write: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let written = write.await;
    if written.is_err() {
        delete_all_images(objects, prefixes).await;
    }
    written
}

async fn delete_all_images(objects: &Objects, prefixes: &[String]) {
    for prefix in prefixes {
        delete_images(objects, prefix).await;
    }
}

pub async fn insert_analysis(
    pool: &Pool,
    objects: &Objects,
    keys: &KeyRing,
    a: &AnalysisRecord,
    images: StoredImages<'_>,
) -> Result<()> {
    let prefix = put_images(objects, keys, &a.id, images).await?;
    or_delete_images(objects, std::slice::from_ref(&prefix), async {
        let mut tx = pool.begin().await.map_err(db_err)?;
        insert_analysis_in(&mut tx, a, &prefix, keys, None).await?;
        tx.commit().await.map_err(db_err)
    })
    .await
}

/// One analysis inside `tx`, its images under `prefix`, as slice `slice` of a batch when given.
async fn insert_analysis_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    a: &AnalysisRecord,
    prefix: &str,
    keys: &KeyRing,
    slice: Option<(&str, i64)>,
) -> Result<()> {
    let probabilities = serde_json::to_string(&a.probabilities).map_err(db_err)?;
    let input_reasons = serde_json::to_string(&a.input_reasons).map_err(db_err)?;
    let gate = match &a.gate {
        Some(g) => Some(serde_json::to_string(g).map_err(db_err)?),
        None => None,
    };
    let presence = match &a.presence {
        Some(p) => Some(serde_json::to_string(p).map_err(db_err)?),
        None => None,
    };
    sqlx::query(
        "INSERT INTO analyses (id, created_unix, filename, model_name, model_version, class_id, class_name, \
         confidence, uncertain, verdict, input_reasons, gate, probabilities, width, height, image_png, heatmap_png, \
         batch_id, slice_index, entropy, object_prefix, presence) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)",
    )
    .bind(&a.id)
    .bind(a.created_unix)
    .bind(seal_text(keys, &format!("analyses/{}/filename", a.id), &a.filename))
    .bind(&a.model_name)
    .bind(&a.model_version)
    .bind(&a.class_id)
    .bind(&a.class_name)
    .bind(a.confidence)
    .bind(i64::from(a.uncertain))
    .bind(&a.verdict)
    .bind(input_reasons)
    .bind(gate)
    .bind(probabilities)
    .bind(a.width as i64)
    .bind(a.height as i64)
    // The images are in the object store; the columns (NOT NULL since version 1) stay empty.
    .bind(Vec::<u8>::new())
    .bind(Vec::<u8>::new())
    .bind(slice.map(|(b, _)| b))
    .bind(slice.map(|(_, i)| i))
    .bind(entropy_bits(&a.probabilities))
    .bind(prefix)
    .bind(presence)
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
    objects: &Objects,
    keys: &KeyRing,
    batch: &BatchRecord,
    slices: &[(&AnalysisRecord, StoredImages<'_>)],
) -> Result<()> {
    let mut prefixes = Vec::with_capacity(slices.len());
    for (a, images) in slices {
        match put_images(objects, keys, &a.id, *images).await {
            Ok(prefix) => prefixes.push(prefix),
            Err(e) => {
                delete_all_images(objects, &prefixes).await;
                return Err(e);
            }
        }
    }
    or_delete_images(
        objects,
        &prefixes,
        insert_batch_rows(pool, keys, batch, slices, &prefixes),
    )
    .await
}

async fn insert_batch_rows(
    pool: &Pool,
    keys: &KeyRing,
    batch: &BatchRecord,
    slices: &[(&AnalysisRecord, StoredImages<'_>)],
    prefixes: &[String],
) -> Result<()> {
    let mut tx = pool.begin().await.map_err(db_err)?;
    sqlx::query("INSERT INTO batches (id, created_unix, series, errors) VALUES ($1, $2, $3, $4)")
        .bind(&batch.id)
        .bind(batch.created_unix)
        .bind(seal_text(
            keys,
            &format!("batches/{}/series", batch.id),
            &batch.series.to_string(),
        ))
        .bind(seal_text(
            keys,
            &format!("batches/{}/errors", batch.id),
            &batch.errors.to_string(),
        ))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    for (i, ((a, _), prefix)) in slices.iter().zip(prefixes).enumerate() {
        insert_analysis_in(&mut tx, a, prefix, keys, Some((&batch.id, i as i64))).await?;
    }
    tx.commit().await.map_err(db_err)
}

/// A batch and its analyses in slice order.
pub async fn get_batch(
    pool: &Pool,
    keys: &KeyRing,
    id: &str,
) -> Result<Option<(BatchRecord, Vec<AnalysisRecord>)>> {
    let Some(row) =
        sqlx::query("SELECT id, created_unix, series, errors FROM batches WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(db_err)?
    else {
        return Ok(None);
    };
    let series = open_text(
        keys,
        &format!("batches/{id}/series"),
        &row.try_get::<Vec<u8>, _>("series").map_err(db_err)?,
    )?;
    let errors = open_text(
        keys,
        &format!("batches/{id}/errors"),
        &row.try_get::<Vec<u8>, _>("errors").map_err(db_err)?,
    )?;
    let batch = BatchRecord {
        id: row.try_get("id").map_err(db_err)?,
        created_unix: row.try_get("created_unix").map_err(db_err)?,
        series: serde_json::from_str(&series).map_err(db_err)?,
        errors: serde_json::from_str(&errors).map_err(db_err)?,
    };
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM analyses WHERE batch_id = $1 ORDER BY slice_index"
    ))
    .bind(id)
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    let analyses = rows
        .iter()
        .map(|r| to_record(keys, r))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some((batch, analyses)))
}

const COLUMNS: &str = "id, created_unix, filename, model_name, model_version, class_id, class_name, confidence, \
                       uncertain, verdict, input_reasons, gate, presence, probabilities, width, height";

fn to_record(keys: &KeyRing, row: &crate::database::Row) -> Result<AnalysisRecord> {
    let id: String = row.try_get("id").map_err(db_err)?;
    let filename = open_text(
        keys,
        &format!("analyses/{id}/filename"),
        &row.try_get::<Vec<u8>, _>("filename").map_err(db_err)?,
    )?;
    let probabilities: String = row.try_get("probabilities").map_err(db_err)?;
    let input_reasons: String = row.try_get("input_reasons").map_err(db_err)?;
    let gate: Option<String> = row.try_get("gate").map_err(db_err)?;
    let presence: Option<String> = row.try_get("presence").map_err(db_err)?;
    Ok(AnalysisRecord {
        id,
        created_unix: row.try_get("created_unix").map_err(db_err)?,
        filename,
        model_name: row.try_get("model_name").map_err(db_err)?,
        model_version: row.try_get("model_version").map_err(db_err)?,
        class_id: row.try_get("class_id").map_err(db_err)?,
        class_name: row.try_get("class_name").map_err(db_err)?,
        confidence: row.try_get("confidence").map_err(db_err)?,
        uncertain: row.try_get::<i64, _>("uncertain").map_err(db_err)? != 0,
        verdict: row.try_get("verdict").map_err(db_err)?,
        input_reasons: serde_json::from_str(&input_reasons).map_err(db_err)?,
        gate: match gate {
            Some(g) => Some(serde_json::from_str(&g).map_err(db_err)?),
            None => None,
        },
        presence: match presence {
            Some(p) => Some(serde_json::from_str(&p).map_err(db_err)?),
            None => None,
        },
        probabilities: serde_json::from_str(&probabilities).map_err(db_err)?,
        width: row.try_get::<i64, _>("width").map_err(db_err)? as u32,
        height: row.try_get::<i64, _>("height").map_err(db_err)? as u32,
    })
}

pub async fn get_analysis(pool: &Pool, keys: &KeyRing, id: &str) -> Result<Option<AnalysisRecord>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM analyses WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(db_err)?;
    row.as_ref().map(|r| to_record(keys, r)).transpose()
}

pub async fn list_analyses(
    pool: &Pool,
    keys: &KeyRing,
    limit: i64,
    offset: i64,
) -> Result<Vec<AnalysisRecord>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM analyses ORDER BY created_unix DESC, id LIMIT $1 OFFSET $2"
    ))
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    rows.iter().map(|r| to_record(keys, r)).collect()
}

/// The display image (or with `heatmap`, the Grad-CAM heat-map) of analysis `id`.
pub async fn get_png(
    pool: &Pool,
    objects: &Objects,
    keys: &KeyRing,
    id: &str,
    heatmap: bool,
) -> Result<Option<Vec<u8>>> {
    let column = if heatmap { "heatmap_png" } else { "image_png" };
    image(pool, objects, keys, id, column).await
}

/// Image `column` of analysis `id`, from the object store or, for an analysis stored before
/// it, from the column; `None` when there is no such analysis or it has no such image.
pub(crate) async fn image(
    pool: &Pool,
    objects: &Objects,
    keys: &KeyRing,
    id: &str,
    column: &str,
) -> Result<Option<Vec<u8>>> {
    debug_assert!(IMAGE_COLUMNS.contains(&column));
    let row = sqlx::query(&format!(
        "SELECT object_prefix, {column} AS png FROM analyses WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(db_err)?;
    let Some(row) = row else { return Ok(None) };
    let context = format!("analyses/{id}/{column}");
    let sealed = match row
        .try_get::<Option<String>, _>("object_prefix")
        .map_err(db_err)?
    {
        Some(prefix) => {
            let key = format!("{prefix}/{column}");
            // The source image is optional; the other two are written with every row.
            if column == "source_png" {
                objects.get(&key).await?
            } else {
                Some(objects.get_named(&key).await?)
            }
        }
        None => row.try_get::<Option<Vec<u8>>, _>("png").map_err(db_err)?,
    };
    Ok(sealed.map(|s| keys.open(&context, &s)).transpose()?)
}

/// A sealed column: its table, the table's key column, the column naming the row in the
/// sealing context, the column itself, and which rows hold a value there.
struct SealedColumn {
    table: &'static str,
    key: RowKey,
    owner: &'static str,
    column: &'static str,
    rows: &'static str,
}

/// How a table's rows are named for an update.
#[derive(Clone, Copy)]
enum RowKey {
    Text(&'static str),
    Integer(&'static str),
}

/// Rows whose images are in their columns (the others' are in the object store).
const IMAGES_IN_ROW: &str = "object_prefix IS NULL";

const SEALED: &[SealedColumn] = &[
    sealed("analyses", RowKey::Text("id"), "id", "filename", "1 = 1"),
    image_column("image_png"),
    image_column("heatmap_png"),
    image_column("source_png"),
    sealed("batches", RowKey::Text("id"), "id", "series", "1 = 1"),
    sealed("batches", RowKey::Text("id"), "id", "errors", "1 = 1"),
    sealed(
        "feedback",
        RowKey::Integer("id"),
        "analysis_id",
        "comment",
        "1 = 1",
    ),
];

/// An image column of `analyses` (holding a value only in rows from before the object store).
const fn image_column(column: &'static str) -> SealedColumn {
    sealed("analyses", RowKey::Text("id"), "id", column, IMAGES_IN_ROW)
}

const fn sealed(
    table: &'static str,
    key: RowKey,
    owner: &'static str,
    column: &'static str,
    rows: &'static str,
) -> SealedColumn {
    SealedColumn {
        table,
        key,
        owner,
        column,
        rows,
    }
}

/// What [`reseal`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reseal {
    /// Seal values still in the clear (databases from before encryption).
    Plaintext,
    /// Also re-seal values sealed with an older key (`oncolens key rotate`).
    OlderKeys,
}

/// Seals every stored value that `what` selects with the sealing key, the database's in one
/// transaction, then the object store's (one object at a time, each replaced whole); returns
/// how many values changed. Afterwards nothing selected is left in the clear or under an old
/// key. Objects are written sealed only, so [`Reseal::Plaintext`] has none to seal.
pub async fn reseal(pool: &Pool, objects: &Objects, keys: &KeyRing, what: Reseal) -> Result<u64> {
    let dialect = Dialect::of(pool);
    // A value is selected when it does not start with this: the format's magic (plaintext),
    // or the magic and the sealing key's id (plaintext or an older key).
    let prefix = match what {
        Reseal::Plaintext => KeyRing::sealed_magic().to_vec(),
        Reseal::OlderKeys => keys.sealing_prefix(),
    };
    let mut tx = pool.begin().await.map_err(db_err)?;
    let mut changed = 0;
    for sealed in SEALED {
        let SealedColumn {
            table,
            key,
            owner,
            column,
            rows,
        } = *sealed;
        // SQLite keeps file names and summaries from before encryption as TEXT; PostgreSQL
        // holds only BYTEA there.
        let value = match dialect {
            Dialect::Sqlite => format!("CAST({column} AS BLOB)"),
            Dialect::Postgres => column.to_string(),
        };
        let key_column = match key {
            RowKey::Text(c) | RowKey::Integer(c) => c,
        };
        let rows = sqlx::query(&format!(
            "SELECT {key_column} AS row_key, {owner} AS owner, {value} AS value FROM {table} \
             WHERE {rows} AND {column} IS NOT NULL AND substr({value}, 1, {len}) IS DISTINCT FROM $1",
            len = prefix.len()
        ))
        .bind(prefix.clone())
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        for row in rows {
            let owner: String = row.try_get("owner").map_err(db_err)?;
            let value: Vec<u8> = row.try_get("value").map_err(db_err)?;
            let context = format!("{table}/{owner}/{column}");
            let plain = if KeyRing::is_sealed(&value) {
                keys.open(&context, &value)?
            } else {
                value
            };
            let update = format!("UPDATE {table} SET {column} = $1 WHERE {key_column} = $2");
            let update = sqlx::query(&update).bind(keys.seal(&context, &plain));
            let update = match key {
                RowKey::Text(_) => {
                    update.bind(row.try_get::<String, _>("row_key").map_err(db_err)?)
                }
                RowKey::Integer(_) => {
                    update.bind(row.try_get::<i64, _>("row_key").map_err(db_err)?)
                }
            };
            update.execute(&mut *tx).await.map_err(db_err)?;
            changed += 1;
        }
    }
    tx.commit().await.map_err(db_err)?;
    if changed > 0 {
        erase_old_versions(pool, dialect).await?;
    }
    if what == Reseal::OlderKeys {
        changed += reseal_objects(pool, objects, keys, &prefix).await?;
    }
    Ok(changed)
}

/// Re-seals the images in the object store that do not start with `prefix`.
async fn reseal_objects(
    pool: &Pool,
    objects: &Objects,
    keys: &KeyRing,
    prefix: &[u8],
) -> Result<u64> {
    let rows =
        sqlx::query("SELECT id, object_prefix FROM analyses WHERE object_prefix IS NOT NULL")
            .fetch_all(pool)
            .await
            .map_err(db_err)?;
    let mut changed = 0;
    for row in rows {
        let id: String = row.try_get("id").map_err(db_err)?;
        let object_prefix: String = row.try_get("object_prefix").map_err(db_err)?;
        for column in IMAGE_COLUMNS {
            let key = format!("{object_prefix}/{column}");
            let Some(value) = objects.get(&key).await? else {
                continue;
            };
            if value.starts_with(prefix) {
                continue;
            }
            let context = format!("analyses/{id}/{column}");
            let plain = keys.open(&context, &value)?;
            objects.put(&key, keys.seal(&context, &plain)).await?;
            changed += 1;
        }
    }
    Ok(changed)
}

/// Drops the old versions of rewritten rows from the files.
async fn erase_old_versions(pool: &Pool, dialect: Dialect) -> Result<()> {
    let statements: &[&str] = match dialect {
        // The old values' pages are zeroed by secure_delete; VACUUM also drops the free pages
        // and the write-ahead log's copies.
        Dialect::Sqlite => &["VACUUM", "PRAGMA wal_checkpoint(TRUNCATE)"],
        // Plain VACUUM only marks dead row versions reusable; FULL rewrites the tables.
        Dialect::Postgres => &["VACUUM FULL analyses, batches, feedback"],
    };
    for statement in statements {
        sqlx::query(statement).execute(pool).await.map_err(db_err)?;
    }
    Ok(())
}

/// Deletes the objects of deleted rows (`object_prefix` of each).
async fn delete_images_of(objects: &Objects, rows: &[crate::database::Row]) -> Result<()> {
    for row in rows {
        if let Some(prefix) = row
            .try_get::<Option<String>, _>("object_prefix")
            .map_err(db_err)?
        {
            delete_images(objects, &prefix).await;
        }
    }
    Ok(())
}

/// Deletes an analysis, its feedback and its images; `false` if there was none.
pub async fn delete_analysis(pool: &Pool, objects: &Objects, id: &str) -> Result<bool> {
    let deleted = sqlx::query("DELETE FROM analyses WHERE id = $1 RETURNING object_prefix")
        .bind(id)
        .fetch_all(pool)
        .await
        .map_err(db_err)?;
    delete_images_of(objects, &deleted).await?;
    Ok(!deleted.is_empty())
}

/// Deletes a batch with all its slices' analyses and their images; `false` if there was none.
pub async fn delete_batch(pool: &Pool, objects: &Objects, id: &str) -> Result<bool> {
    let mut tx = pool.begin().await.map_err(db_err)?;
    let slices = sqlx::query("DELETE FROM analyses WHERE batch_id = $1 RETURNING object_prefix")
        .bind(id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
    let done = sqlx::query("DELETE FROM batches WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    delete_images_of(objects, &slices).await?;
    Ok(done.rows_affected() > 0)
}

/// Deletes the analyses (and batches) made before `cutoff_unix` with their images; returns how
/// many analyses.
pub async fn purge_older_than(pool: &Pool, objects: &Objects, cutoff_unix: i64) -> Result<u64> {
    let mut tx = pool.begin().await.map_err(db_err)?;
    let deleted =
        sqlx::query("DELETE FROM analyses WHERE created_unix < $1 RETURNING object_prefix")
            .bind(cutoff_unix)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
    let analyses = deleted.len() as u64;
    sqlx::query(
        "DELETE FROM batches WHERE created_unix < $1 \
         AND NOT EXISTS (SELECT 1 FROM analyses WHERE analyses.batch_id = batches.id)",
    )
    .bind(cutoff_unix)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    delete_images_of(objects, &deleted).await?;
    Ok(analyses)
}
