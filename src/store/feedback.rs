//! Clinicians' feedback on analyses, the review queue (analyses without feedback, the most
//! informative first) and the agreement between the model and the clinicians.
//!
//! An analysis may get feedback more than once (a second opinion, a correction of a slip):
//! the latest counts for the export and the statistics, the earlier ones stay on record.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;

use crate::database::Pool;
use crate::objects::Objects;

use super::{AnalysisRecord, COLUMNS, db_err, entropy_bits, open_text, seal_text, to_record};
use crate::core::error::{Result, StoreError};
use crate::security::keys::KeyRing;

/// What a clinician said about an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackVerdict {
    /// The model's class is right.
    Confirmed,
    /// The scan shows another class (given with the feedback).
    Corrected,
    /// The scan cannot be judged (wrong sequence, artefacts, not a brain slice): no class.
    NotAssessable,
}

impl FeedbackVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirmed => "confirmed",
            Self::Corrected => "corrected",
            Self::NotAssessable => "not_assessable",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "confirmed" => Some(Self::Confirmed),
            "corrected" => Some(Self::Corrected),
            "not_assessable" => Some(Self::NotAssessable),
            _ => None,
        }
    }
}

/// Feedback about to be stored.
#[derive(Debug, Clone)]
pub struct NewFeedback<'a> {
    pub analysis_id: &'a str,
    pub verdict: FeedbackVerdict,
    /// The class given; empty for [`FeedbackVerdict::NotAssessable`].
    pub class_id: &'a str,
    pub comment: &'a str,
    /// The account that gave it.
    pub given_by: &'a str,
}

#[derive(Debug, Clone, Serialize)]
pub struct FeedbackRecord {
    pub id: i64,
    pub analysis_id: String,
    pub created_unix: i64,
    pub verdict: String,
    pub class_id: String,
    pub comment: String,
    pub given_by: String,
}

fn comment_context(analysis_id: &str) -> String {
    format!("feedback/{analysis_id}/comment")
}

pub async fn insert_feedback(
    pool: &Pool,
    keys: &KeyRing,
    feedback: &NewFeedback<'_>,
    now: i64,
) -> Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO feedback (analysis_id, created_unix, verdict, class_id, comment, given_by) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(feedback.analysis_id)
    .bind(now)
    .bind(feedback.verdict.as_str())
    .bind(feedback.class_id)
    .bind(seal_text(
        keys,
        &comment_context(feedback.analysis_id),
        feedback.comment,
    ))
    .bind(feedback.given_by)
    .fetch_one(pool)
    .await
    .map_err(db_err)
}

pub async fn list_feedback(
    pool: &Pool,
    keys: &KeyRing,
    analysis_id: &str,
) -> Result<Vec<FeedbackRecord>> {
    let rows = sqlx::query(
        "SELECT id, analysis_id, created_unix, verdict, class_id, comment, given_by FROM feedback \
         WHERE analysis_id = $1 ORDER BY id",
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
                comment: open_text(
                    keys,
                    &comment_context(analysis_id),
                    &r.try_get::<Vec<u8>, _>("comment").map_err(db_err)?,
                )?,
                given_by: r.try_get("given_by").map_err(db_err)?,
            })
        })
        .collect()
}

/// Computes the entropy of analyses stored before it was kept; returns how many.
pub async fn backfill_entropy(pool: &Pool) -> Result<u64> {
    let rows = sqlx::query("SELECT id, probabilities FROM analyses WHERE entropy IS NULL")
        .fetch_all(pool)
        .await
        .map_err(db_err)?;
    let mut tx = pool.begin().await.map_err(db_err)?;
    for row in &rows {
        let id: String = row.try_get("id").map_err(db_err)?;
        let probabilities: String = row.try_get("probabilities").map_err(db_err)?;
        let p: Vec<f32> = serde_json::from_str(&probabilities).map_err(db_err)?;
        sqlx::query("UPDATE analyses SET entropy = $1 WHERE id = $2")
            .bind(entropy_bits(&p))
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)?;
    Ok(rows.len() as u64)
}

/// Analyses without feedback, the most informative first: highest predictive entropy (the
/// model least sure between the classes), then the newest.
pub async fn review_queue(
    pool: &Pool,
    keys: &KeyRing,
    limit: i64,
    offset: i64,
) -> Result<Vec<(AnalysisRecord, f64)>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS}, entropy FROM analyses \
         WHERE NOT EXISTS (SELECT 1 FROM feedback WHERE feedback.analysis_id = analyses.id) \
         ORDER BY entropy DESC, created_unix DESC, id LIMIT $1 OFFSET $2"
    ))
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    rows.iter()
        .map(|r| {
            let entropy: Option<f64> = r.try_get("entropy").map_err(db_err)?;
            let record = to_record(keys, r)?;
            let entropy = entropy.unwrap_or_else(|| entropy_bits(&record.probabilities));
            Ok((record, entropy))
        })
        .collect()
}

/// How many analyses have no feedback yet.
pub async fn pending_review(pool: &Pool) -> Result<i64> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM analyses \
         WHERE NOT EXISTS (SELECT 1 FROM feedback WHERE feedback.analysis_id = analyses.id)",
    )
    .fetch_one(pool)
    .await
    .map_err(db_err)
}

/// The latest feedback on one analysis, with what the model had answered.
#[derive(Debug, Clone, Serialize)]
pub struct FeedbackItem {
    pub analysis_id: String,
    pub analysis_unix: i64,
    pub model_name: String,
    pub model_version: String,
    /// The model's class, and its answer (`answer`, `uncertain` or `not_brain_mri`).
    pub predicted_class: String,
    pub predicted_verdict: String,
    pub confidence: f64,
    pub verdict: FeedbackVerdict,
    /// The class the clinician gave (empty when not assessable).
    pub given_class: String,
    pub given_by: String,
    pub given_unix: i64,
}

/// The latest feedback of every analysis that has some, oldest first.
pub async fn feedback_items(pool: &Pool) -> Result<Vec<FeedbackItem>> {
    let rows = sqlx::query(
        "SELECT a.id, a.created_unix AS analysis_unix, a.model_name, a.model_version, \
                a.class_id AS predicted_class, a.verdict AS predicted_verdict, a.confidence, \
                f.verdict, f.class_id AS given_class, f.given_by, f.created_unix AS given_unix \
         FROM feedback f JOIN analyses a ON a.id = f.analysis_id \
         WHERE f.id = (SELECT MAX(g.id) FROM feedback g WHERE g.analysis_id = f.analysis_id) \
         ORDER BY f.created_unix, f.id",
    )
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    rows.iter()
        .map(|r| {
            let verdict: String = r.try_get("verdict").map_err(db_err)?;
            Ok(FeedbackItem {
                analysis_id: r.try_get("id").map_err(db_err)?,
                analysis_unix: r.try_get("analysis_unix").map_err(db_err)?,
                model_name: r.try_get("model_name").map_err(db_err)?,
                model_version: r.try_get("model_version").map_err(db_err)?,
                predicted_class: r.try_get("predicted_class").map_err(db_err)?,
                predicted_verdict: r.try_get("predicted_verdict").map_err(db_err)?,
                confidence: r.try_get("confidence").map_err(db_err)?,
                verdict: FeedbackVerdict::parse(&verdict).ok_or_else(|| {
                    db_err(StoreError::Corrupt(format!("feedback verdict {verdict:?}")))
                })?,
                given_class: r.try_get("given_class").map_err(db_err)?,
                given_by: r.try_get("given_by").map_err(db_err)?,
                given_unix: r.try_get("given_unix").map_err(db_err)?,
            })
        })
        .collect()
}

/// The scan of an analysis for training: the decoded scan at its own resolution and bit depth
/// (`true`), or for analyses stored before it was kept, the display image (`false`).
pub async fn training_image(
    pool: &Pool,
    objects: &Objects,
    keys: &KeyRing,
    id: &str,
) -> Result<Option<(Vec<u8>, bool)>> {
    if let Some(source) = super::image(pool, objects, keys, id, "source_png").await? {
        return Ok(Some((source, true)));
    }
    Ok(super::image(pool, objects, keys, id, "image_png")
        .await?
        .map(|display| (display, false)))
}

/// How often the clinicians agreed with the model, counted on the latest feedback of each
/// analysis. "Not assessable" items count apart: they neither agree nor disagree.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Agreement {
    pub items: usize,
    pub confirmed: usize,
    pub corrected: usize,
    pub not_assessable: usize,
    /// confirmed / (confirmed + corrected); `None` with no class given yet.
    pub rate: Option<f64>,
    pub per_class: Vec<ClassAgreement>,
    pub per_month: Vec<MonthAgreement>,
}

/// Agreement for one class.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClassAgreement {
    pub class_id: String,
    /// Items the model gave this class, and how many of them the clinicians confirmed
    /// (the model's precision on reviewed items).
    pub predicted: usize,
    pub predicted_confirmed: usize,
    /// Items the clinicians gave this class, and how many the model had given it (recall).
    pub given: usize,
    pub given_agreed: usize,
}

/// Agreement for the feedback given in one calendar month (UTC).
#[derive(Debug, Clone, Serialize)]
pub struct MonthAgreement {
    /// `YYYY-MM`.
    pub month: String,
    pub items: usize,
    pub agreed: usize,
    pub not_assessable: usize,
}

impl Agreement {
    /// The statistics of `items` over the model's `classes` (ids in class order).
    pub fn of(items: &[FeedbackItem], classes: &[String]) -> Self {
        let mut out = Self {
            items: items.len(),
            per_class: classes
                .iter()
                .map(|c| ClassAgreement {
                    class_id: c.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let mut months: BTreeMap<String, MonthAgreement> = BTreeMap::new();
        for item in items {
            let month = months
                .entry(month_of(item.given_unix))
                .or_insert_with_key(|m| MonthAgreement {
                    month: m.clone(),
                    items: 0,
                    agreed: 0,
                    not_assessable: 0,
                });
            month.items += 1;
            if item.verdict == FeedbackVerdict::NotAssessable {
                out.not_assessable += 1;
                month.not_assessable += 1;
                continue;
            }
            let agreed = item.given_class == item.predicted_class;
            if agreed {
                out.confirmed += 1;
                month.agreed += 1;
            } else {
                out.corrected += 1;
            }
            if let Some(c) = out
                .per_class
                .iter_mut()
                .find(|c| c.class_id == item.predicted_class)
            {
                c.predicted += 1;
                c.predicted_confirmed += usize::from(agreed);
            }
            if let Some(c) = out
                .per_class
                .iter_mut()
                .find(|c| c.class_id == item.given_class)
            {
                c.given += 1;
                c.given_agreed += usize::from(agreed);
            }
        }
        let judged = out.confirmed + out.corrected;
        out.rate = (judged > 0).then(|| out.confirmed as f64 / judged as f64);
        out.per_month = months.into_values().collect();
        out
    }
}

/// `YYYY-MM` (UTC) of a Unix time.
fn month_of(unix: i64) -> String {
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let days = unix.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(predicted: &str, verdict: FeedbackVerdict, given: &str, unix: i64) -> FeedbackItem {
        FeedbackItem {
            analysis_id: "a".into(),
            analysis_unix: unix,
            model_name: "m".into(),
            model_version: "v".into(),
            predicted_class: predicted.into(),
            predicted_verdict: "answer".into(),
            confidence: 0.9,
            verdict,
            given_class: given.into(),
            given_by: "alice".into(),
            given_unix: unix,
        }
    }

    #[test]
    fn months_are_civil_dates() {
        assert_eq!(month_of(0), "1970-01");
        assert_eq!(month_of(951_782_400), "2000-02"); // 2000-02-29
        assert_eq!(month_of(1_795_950_939), "2026-11");
        assert_eq!(month_of(-1), "1969-12");
    }

    #[test]
    fn agreement_counts_latest_verdicts_by_class_and_month() {
        use FeedbackVerdict::*;
        let classes = vec!["g".to_string(), "m".to_string()];
        let items = vec![
            item("g", Confirmed, "g", 0),
            item("g", Corrected, "m", 0),
            item("m", Confirmed, "m", 2_700_000),
            item("m", NotAssessable, "", 2_700_000),
        ];
        let a = Agreement::of(&items, &classes);
        assert_eq!((a.confirmed, a.corrected, a.not_assessable), (2, 1, 1));
        assert!((a.rate.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        let g = &a.per_class[0];
        assert_eq!(
            (g.predicted, g.predicted_confirmed, g.given, g.given_agreed),
            (2, 1, 1, 1)
        );
        let m = &a.per_class[1];
        assert_eq!(
            (m.predicted, m.predicted_confirmed, m.given, m.given_agreed),
            (1, 1, 2, 1)
        );
        assert_eq!(a.per_month.len(), 2);
        assert_eq!(a.per_month[1].month, "1970-02");
        assert_eq!(
            (a.per_month[1].agreed, a.per_month[1].not_assessable),
            (1, 1)
        );
        assert_eq!(Agreement::of(&[], &classes).rate, None);
    }

    #[test]
    fn entropy_in_bits() {
        assert!((entropy_bits(&[0.25; 4]) - 2.0).abs() < 1e-9);
        assert_eq!(entropy_bits(&[1.0, 0.0, 0.0, 0.0]), 0.0);
    }
}
