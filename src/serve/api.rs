//! JSON API under `/api/v1`, plus health, readiness and metrics.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::actor;
use super::engine::{MAX_UPLOAD_FILES, Outcome};
use super::store::{self, AnalysisRecord, BatchRecord, FeedbackVerdict, StoredImages};
use super::{AppState, Busy, new_id, now_unix, valid_id};
use crate::core::DISCLAIMER;
use crate::deid::Deidentifier;
use crate::imaging::dicom::DicomSource;
use crate::inference::Verdict;
use crate::inference::series::{SeriesSlice, summarise_series};
use crate::modelfile::Manifest;

/// The CSRF token a multipart upload must carry (checked as its fields are read).
#[derive(Debug, Clone)]
pub struct ExpectedCsrf(pub String);

impl ExpectedCsrf {
    pub fn matches(&self, token: &str) -> bool {
        subtle::ConstantTimeEq::ct_eq(self.0.as_bytes(), token.as_bytes()).into()
    }
}

/// An error for the person or program that asked: a status and one plain sentence.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    /// `{"error": "..."}`; a 503 also says when to retry.
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        r
    }
}

pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message).into_response()
}

fn busy() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "The server is busy with other analyses; try again in a few seconds.",
    )
}

#[derive(Serialize)]
pub struct ClassProbability {
    pub class_id: String,
    pub class_name: String,
    pub probability: f32,
}

#[derive(Serialize)]
pub struct GateJson {
    pub brain_mri_score: f32,
    pub threshold: f32,
    pub refused: bool,
    /// Kind id, e.g. `head_ct`.
    pub looks_most_like: String,
    /// The same in words, e.g. "a head CT".
    pub looks_most_like_name: String,
    pub looks_most_like_probability: f32,
}

/// What the model's rule for saying "No tumour" found.
#[derive(Serialize)]
pub struct PresenceJson {
    /// Calibrated probability of a tumour of any type (1 - p(no tumour)).
    pub tumour_probability: f32,
    /// The probability "No tumour" needs before this model says it.
    pub min_no_tumour_probability: f32,
    /// "No tumour" was the most probable class but below that probability: the answer is the
    /// most probable tumour type.
    pub no_tumour_withheld: bool,
    /// The rule and what it did, in words.
    pub explanation: String,
}

#[derive(Serialize)]
pub struct AnalysisJson {
    pub id: String,
    pub created: String,
    pub filename: String,
    /// What to show: the class name, "Uncertain" below the model's confidence threshold,
    /// "Tumour not ruled out" when "No tumour" was likeliest but not likely enough, or "Not a
    /// brain MRI slice" when the input check refused the image.
    pub label: String,
    /// `answer`, `uncertain` or `not_brain_mri`.
    pub verdict: String,
    /// Why the image does not look like a brain MRI slice (empty unless `not_brain_mri`).
    pub input_reasons: Vec<String>,
    /// The input gate's second opinion: its probability that the image is a brain MRI slice,
    /// the threshold below which it refuses, and the other kind the image looks most like.
    pub gate: Option<GateJson>,
    /// The rule for saying "No tumour" (`None` for analyses made without one).
    pub presence: Option<PresenceJson>,
    pub class_id: String,
    pub class_name: String,
    pub confidence: f64,
    pub uncertain: bool,
    pub probabilities: Vec<ClassProbability>,
    pub model: serde_json::Value,
    pub note: &'static str,
    pub links: serde_json::Value,
}

pub fn to_json(state: &AppState, a: &AnalysisRecord) -> AnalysisJson {
    let explainer = state.explainer();
    let classes = &explainer.manifest.classes;
    let created =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(a.created_unix.max(0) as u64);
    AnalysisJson {
        id: a.id.clone(),
        created: humantime::format_rfc3339_seconds(created).to_string(),
        filename: a.filename.clone(),
        label: match a.verdict.as_str() {
            "not_brain_mri" => "Not a brain MRI slice".into(),
            _ if a.presence.as_ref().is_some_and(|p| p.no_tumour_withheld) => {
                "Tumour not ruled out".into()
            }
            "uncertain" => "Uncertain".into(),
            _ => a.class_name.clone(),
        },
        verdict: a.verdict.clone(),
        input_reasons: a.input_reasons.clone(),
        gate: a.gate.as_ref().map(|g| GateJson {
            brain_mri_score: g.score,
            threshold: g.threshold,
            refused: g.refused,
            looks_most_like: g.looks_like.clone(),
            looks_most_like_name: crate::modelfile::gate::kind_display(&g.looks_like),
            looks_most_like_probability: g.looks_like_probability,
        }),
        presence: a.presence.as_ref().map(|p| PresenceJson {
            tumour_probability: p.tumour_probability,
            min_no_tumour_probability: p.min_no_tumour_probability,
            no_tumour_withheld: p.no_tumour_withheld,
            explanation: p.explanation(),
        }),
        class_id: a.class_id.clone(),
        class_name: a.class_name.clone(),
        confidence: a.confidence,
        uncertain: a.uncertain,
        probabilities: classes
            .iter()
            .zip(&a.probabilities)
            .map(|(c, p)| ClassProbability {
                class_id: c.id.clone(),
                class_name: c.display.clone(),
                probability: *p,
            })
            .collect(),
        model: json!({ "name": a.model_name, "version": a.model_version }),
        note: DISCLAIMER,
        links: json!({
            "self": format!("/api/v1/analyses/{}", a.id),
            "page": format!("/analyses/{}", a.id),
            "image": format!("/api/v1/analyses/{}/image", a.id),
            "heatmap": format!("/api/v1/analyses/{}/heatmap", a.id),
            "feedback": format!("/api/v1/analyses/{}/feedback", a.id),
        }),
    }
}

/// A multipart failure as the sentence the sender sees: too large (413) or unreadable (400).
fn upload_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "The file is too large.")
    } else {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("The upload could not be read: {}.", e.body_text()),
        )
    }
}

/// Reads every `image` field of a multipart upload: (file name, bytes) each (a zip is opened
/// later, by the worker that analyses it). A file under any other field name is refused (the OpenAPI description
/// names the field).
pub async fn read_uploads(
    mut multipart: Multipart,
    csrf: Option<&ExpectedCsrf>,
) -> Result<Vec<(String, Bytes)>, ApiError> {
    let mut files = Vec::new();
    let mut empty_file = false;
    if let Some(expected) = csrf {
        // A page's upload form: its token comes first (the form puts it before the files),
        // so nothing of a forged upload is read beyond it.
        let refused = || {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "Refused: the form's security token is missing or out of date; reload the page \
                 and try again.",
            )
        };
        let field = multipart.next_field().await.map_err(upload_error)?;
        let Some(field) = field.filter(|f| f.name() == Some("csrf")) else {
            return Err(refused());
        };
        let token = field.text().await.map_err(upload_error)?;
        if !expected.matches(token.trim()) {
            return Err(refused());
        }
    }
    while let Some(field) = multipart.next_field().await.map_err(upload_error)? {
        if field.name() != Some("image") {
            if field.file_name().is_some() {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "The file was sent in a field named {:?}; send it in a form field named \"image\".",
                        field.name().unwrap_or("")
                    ),
                ));
            }
            continue;
        }
        let name = field
            .file_name()
            .unwrap_or("upload")
            .chars()
            .take(200)
            .collect::<String>();
        let bytes = field.bytes().await.map_err(upload_error)?;
        if bytes.is_empty() {
            // A browser sends an empty, unnamed part when no file was chosen.
            empty_file |= name != "upload" && !name.is_empty();
            continue;
        }
        files.push((name, bytes));
        if files.len() > MAX_UPLOAD_FILES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("The upload holds more than {MAX_UPLOAD_FILES} files."),
            ));
        }
    }
    if files.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            if empty_file {
                "The uploaded file is empty."
            } else {
                "No file was uploaded (send it in a form field named \"image\")."
            },
        ));
    }
    Ok(files)
}

/// The files of an upload body as the server takes them (fields read, zips unpacked, the
/// limits applied) without analysing them; what the `upload` fuzz target drives.
pub async fn parse_upload(
    content_type: &str,
    body: Bytes,
    max_unpacked: usize,
) -> Result<Vec<(String, Bytes)>, ApiError> {
    use axum::extract::FromRequest;
    let request = Request::builder()
        .method("POST")
        .header(header::CONTENT_TYPE, content_type)
        .body(axum::body::Body::from(body))
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let files = read_uploads(multipart, None).await?;
    super::engine::unpack_upload(files, max_unpacked, false).map_err(|r| {
        ApiError::new(
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
            r.message,
        )
    })
}

/// Reads a multipart body to its end, keeping nothing.
async fn discard(mut multipart: Multipart) {
    while let Ok(Some(mut field)) = multipart.next_field().await {
        while let Ok(Some(_)) = field.chunk().await {}
    }
}

/// Takes a place in the queue, reads the upload (within the body timeout), analyses it and
/// stores the result. Shared by the API and the upload page.
pub async fn receive_and_analyse(
    state: &AppState,
    multipart: Multipart,
) -> Result<AnalysisRecord, ApiError> {
    match receive_upload(state, multipart, UploadMode::Single, None).await? {
        Received::Single(record) => Ok(record),
        Received::Batch(..) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "A single analysis was asked for.",
        )),
    }
}

/// What an upload may become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadMode {
    /// One slice, one analysis (`POST /api/v1/analyses`); more is refused.
    Single,
    /// A batch, however many slices (`POST /api/v1/batches`).
    Batch,
    /// One analysis for one slice, a batch for more (the upload form).
    Auto,
}

/// What an upload became: one analysis, or a batch of slices with its series summaries.
pub enum Received {
    Single(AnalysisRecord),
    Batch(BatchRecord, Vec<AnalysisRecord>),
}

/// The images an analysis stores.
fn stored_images(outcome: &Outcome) -> StoredImages<'_> {
    StoredImages {
        display_png: &outcome.image_png,
        heatmap_png: &outcome.heatmap_png,
        source_png: Some(&outcome.source_png),
    }
}

/// The record of one slice analysed by the model of `manifest`.
fn record_of(manifest: &Manifest, name: &str, outcome: &Outcome) -> AnalysisRecord {
    let p = &outcome.prediction;
    AnalysisRecord {
        id: new_id(),
        created_unix: now_unix(),
        filename: name.to_string(),
        model_name: manifest.name.clone(),
        model_version: manifest.version(),
        class_id: p.class_id.clone(),
        class_name: p.class_name.clone(),
        confidence: f64::from(p.confidence),
        uncertain: p.uncertain,
        verdict: match p.verdict {
            Verdict::Answer => "answer",
            Verdict::Uncertain => "uncertain",
            Verdict::NotBrainMri => "not_brain_mri",
        }
        .into(),
        input_reasons: p.rejection_reasons().to_vec(),
        gate: p.input_check.as_ref().and_then(|c| c.gate.clone()),
        presence: p.presence.clone(),
        probabilities: p.probabilities.clone(),
        width: outcome.width,
        height: outcome.height,
    }
}

fn store_error(e: crate::core::error::Error) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("The result could not be stored: {e}"),
    )
}

/// Takes a place in the queue, reads the upload (several files or a zip), analyses every
/// slice and stores the results: one analysis, or a batch with a summary per DICOM series, as
/// `mode` says. DICOM identifiers are replaced
/// before anything is stored (UIDs by fresh `2.25.` UIDs, names by instance numbers).
pub async fn receive_upload(
    state: &AppState,
    multipart: Multipart,
    mode: UploadMode,
    csrf: Option<&ExpectedCsrf>,
) -> Result<Received, ApiError> {
    let Ok(admission) = state.admit() else {
        let _ = tokio::time::timeout(state.limits.body_timeout, discard(multipart)).await;
        return Err(busy());
    };
    let files = tokio::time::timeout(state.limits.body_timeout, read_uploads(multipart, csrf))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "The upload did not arrive within {} s.",
                    state.limits.body_timeout.as_secs()
                ),
            )
        })??;
    let single_only = mode == UploadMode::Single;
    let (explainer, outcomes) = match state.analyse_files(admission, files, single_only).await {
        Err(Busy) => return Err(busy()),
        Ok((_, Err(refused))) => {
            let status =
                StatusCode::from_u16(refused.status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
            return Err(ApiError::new(status, refused.message));
        }
        Ok((explainer, Ok(o))) => (explainer, o),
    };
    let single = match mode {
        UploadMode::Single => true,
        UploadMode::Batch => false,
        UploadMode::Auto => outcomes.len() == 1,
    };
    if single && outcomes.len() == 1 {
        let slice = outcomes.into_iter().next().ok_or_else(busy)?;
        let outcome = slice
            .result
            .map_err(|r| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, r.0))?;
        let record = record_of(&explainer.manifest, &slice.name, &outcome);
        store::insert_analysis(
            &state.db,
            &state.objects,
            &state.keys,
            &record,
            stored_images(&outcome),
        )
        .await
        .map_err(store_error)?;
        return Ok(Received::Single(record));
    }
    let manifest = &explainer.manifest;
    let mut deid = Deidentifier::new(None);
    let mut records = Vec::new();
    let mut analysed = Vec::new();
    let mut errors = Vec::new();
    for slice in &outcomes {
        match &slice.result {
            Ok(outcome) => {
                let record = record_of(manifest, &slice.name, outcome);
                // Identifiers replaced before the summary is made and stored.
                let source = slice.dicom.as_ref().map(|d| DicomSource {
                    study_instance_uid: deid.uid(&d.study_instance_uid),
                    series_instance_uid: deid.uid(&d.series_instance_uid),
                    sop_instance_uid: deid.uid(&d.sop_instance_uid),
                    series_description: None,
                    ..d.clone()
                });
                analysed.push((record.id.clone(), source, outcome));
                records.push(record);
            }
            Err(r) => errors.push(json!({"file": slice.name, "error": r.0})),
        }
    }
    if records.is_empty() {
        let first = errors
            .first()
            .and_then(|e| e["error"].as_str())
            .unwrap_or("No slice could be analysed.")
            .to_string();
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, first));
    }
    let series_slices: Vec<SeriesSlice<'_>> = analysed
        .iter()
        .filter_map(|(id, source, outcome)| {
            Some(SeriesSlice {
                slice: id,
                source: source.as_ref()?,
                prediction: &outcome.prediction,
            })
        })
        .collect();
    let series = summarise_series(manifest, &series_slices);
    let batch = BatchRecord {
        id: new_id(),
        created_unix: now_unix(),
        series: serde_json::to_value(&series).unwrap_or_default(),
        errors: serde_json::Value::Array(errors),
    };
    let stored: Vec<(&AnalysisRecord, StoredImages<'_>)> = records
        .iter()
        .zip(&analysed)
        .map(|(r, (_, _, o))| (r, stored_images(o)))
        .collect();
    store::insert_batch(&state.db, &state.objects, &state.keys, &batch, &stored)
        .await
        .map_err(store_error)?;
    Ok(Received::Batch(batch, records))
}

/// The batch as JSON: its slices' analyses, the files refused, and a summary per series.
pub fn batch_json(
    state: &AppState,
    batch: &BatchRecord,
    analyses: &[AnalysisRecord],
) -> serde_json::Value {
    let created =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(batch.created_unix.max(0) as u64);
    json!({
        "id": batch.id,
        "created": humantime::format_rfc3339_seconds(created).to_string(),
        "slices": analyses.len(),
        "results": analyses.iter().map(|a| to_json(state, a)).collect::<Vec<_>>(),
        "errors": batch.errors,
        "series": batch.series,
        "note": DISCLAIMER,
        "links": {
            "self": format!("/api/v1/batches/{}", batch.id),
            "page": format!("/batches/{}", batch.id),
        },
    })
}

pub async fn create_batch(State(state): State<AppState>, multipart: Multipart) -> Response {
    match receive_upload(&state, multipart, UploadMode::Batch, None).await {
        Ok(Received::Batch(batch, records)) => {
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/batches/{}", batch.id)) {
                headers.insert(header::LOCATION, v);
            }
            (
                StatusCode::CREATED,
                headers,
                Json(batch_json(&state, &batch, &records)),
            )
                .into_response()
        }
        Ok(Received::Single(_)) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, "A batch was asked for.")
        }
        Err(e) => e.into_response(),
    }
}

pub async fn find_batch(
    state: &AppState,
    id: &str,
) -> Result<(BatchRecord, Vec<AnalysisRecord>), ApiError> {
    if !valid_id(id) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "No such batch."));
    }
    store::get_batch(&state.db, &state.keys, id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "No such batch."))
}

pub async fn fetch_batch(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match find_batch(&state, &id).await {
        Ok((batch, analyses)) => Json(batch_json(&state, &batch, &analyses)).into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn create(State(state): State<AppState>, multipart: Multipart) -> Response {
    match receive_and_analyse(&state, multipart).await {
        Ok(record) => {
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/analyses/{}", record.id)) {
                headers.insert(header::LOCATION, v);
            }
            (StatusCode::CREATED, headers, Json(to_json(&state, &record))).into_response()
        }
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    limit: Option<i64>,
    offset: Option<i64>,
}

/// Largest page of `GET /api/v1/analyses`.
pub const MAX_PAGE: i64 = 200;

impl Page {
    /// `(limit, offset)`, refusing what is out of range instead of changing it.
    fn checked(&self) -> Result<(i64, i64), ApiError> {
        let limit = self.limit.unwrap_or(50);
        let offset = self.offset.unwrap_or(0);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("limit must be between 1 and {MAX_PAGE}, not {limit}."),
            ));
        }
        if offset < 0 {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("offset must be 0 or more, not {offset}."),
            ));
        }
        Ok((limit, offset))
    }
}

/// The checked `limit` and `offset` of a listing's query.
fn paging(page: Result<Query<Page>, QueryRejection>) -> Result<(i64, i64), ApiError> {
    page.map_err(|e| ApiError::new(e.status(), e.body_text()))
        .and_then(|Query(p)| p.checked())
}

pub async fn list(
    State(state): State<AppState>,
    page: Result<Query<Page>, QueryRejection>,
) -> Response {
    let (limit, offset) = match paging(page) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    match store::list_analyses(&state.db, &state.keys, limit, offset).await {
        Ok(rows) => {
            let items: Vec<AnalysisJson> = rows.iter().map(|a| to_json(&state, a)).collect();
            Json(json!({ "items": items, "limit": limit, "offset": offset })).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The review queue: analyses without feedback, the most informative (highest entropy) first.
pub async fn review(
    State(state): State<AppState>,
    page: Result<Query<Page>, QueryRejection>,
) -> Response {
    let (limit, offset) = match paging(page) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let queue = store::feedback::review_queue(&state.db, &state.keys, limit, offset).await;
    let pending = store::feedback::pending_review(&state.db).await;
    match (queue, pending) {
        (Ok(rows), Ok(pending)) => {
            let items: Vec<serde_json::Value> = rows
                .iter()
                .map(|(a, entropy)| json!({ "entropy_bits": entropy, "analysis": to_json(&state, a) }))
                .collect();
            Json(json!({ "items": items, "pending": pending, "limit": limit, "offset": offset }))
                .into_response()
        }
        (Err(e), _) | (_, Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Agreement between the model and the clinicians (latest feedback per analysis).
pub async fn agreement(State(state): State<AppState>) -> Response {
    match store::feedback::feedback_items(&state.db).await {
        Ok(items) => {
            let classes = state.explainer().manifest.class_ids();
            Json(store::Agreement::of(&items, &classes)).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub async fn find(state: &AppState, id: &str) -> Result<AnalysisRecord, ApiError> {
    if !valid_id(id) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "No such analysis."));
    }
    match store::get_analysis(&state.db, &state.keys, id).await {
        Ok(Some(a)) => Ok(a),
        Ok(None) => Err(ApiError::new(StatusCode::NOT_FOUND, "No such analysis.")),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
    }
}

pub async fn fetch(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match find(&state, &id).await {
        Ok(a) => Json(to_json(&state, &a)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn png(state: &AppState, id: &str, heatmap: bool) -> Response {
    if !valid_id(id) {
        return error(StatusCode::NOT_FOUND, "No such analysis.");
    }
    match store::get_png(&state.db, &state.objects, &state.keys, id, heatmap).await {
        Ok(Some(bytes)) => (
            [
                (header::CONTENT_TYPE, "image/png"),
                (header::CACHE_CONTROL, "private, max-age=86400"),
            ],
            bytes,
        )
            .into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "No such analysis."),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub async fn image(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    png(&state, &id, false).await
}

pub async fn heatmap(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    png(&state, &id, true).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackBody {
    /// The class the user confirms or corrects to (a class id such as `glioma_tumor`); may be
    /// left out to confirm the model's class, and must be left out for "not assessable".
    #[serde(default)]
    pub class_id: Option<String>,
    /// `confirmed`, `corrected` or `not_assessable`; when left out, it follows from the class.
    #[serde(default)]
    pub verdict: Option<String>,
    #[serde(default)]
    pub comment: String,
}

/// Validates and stores feedback by the current actor; returns its id and the verdict.
pub async fn store_feedback(
    state: &AppState,
    analysis: &AnalysisRecord,
    body: &FeedbackBody,
) -> Result<(i64, &'static str), ApiError> {
    let unprocessable = |m: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m);
    let ids = state.explainer().manifest.class_ids();
    let class = body
        .class_id
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty());
    if let Some(c) = class
        && !ids.iter().any(|id| id == c)
    {
        return Err(unprocessable(format!(
            "Unknown class {c:?}; choose one of {}.",
            ids.join(", ")
        )));
    }
    if body.comment.chars().count() > 2000 {
        return Err(unprocessable(
            "The comment is longer than 2,000 characters.".into(),
        ));
    }
    let asked = match body
        .verdict
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        None => None,
        Some(v) => Some(FeedbackVerdict::parse(v).ok_or_else(|| {
            unprocessable(format!(
                "Unknown verdict {v:?}; choose confirmed, corrected or not_assessable."
            ))
        })?),
    };
    let (verdict, class_id) = match (asked, class) {
        (Some(FeedbackVerdict::NotAssessable), None) => (FeedbackVerdict::NotAssessable, ""),
        (Some(FeedbackVerdict::NotAssessable), Some(_)) => {
            return Err(unprocessable(
                "\"Not assessable\" takes no class: leave class_id out.".into(),
            ));
        }
        (None | Some(FeedbackVerdict::Confirmed), None) => {
            (FeedbackVerdict::Confirmed, analysis.class_id.as_str())
        }
        (None, Some(c)) if c == analysis.class_id => (FeedbackVerdict::Confirmed, c),
        (None, Some(c)) => (FeedbackVerdict::Corrected, c),
        (Some(FeedbackVerdict::Confirmed), Some(c)) if c == analysis.class_id => {
            (FeedbackVerdict::Confirmed, c)
        }
        (Some(FeedbackVerdict::Corrected), Some(c)) if c != analysis.class_id => {
            (FeedbackVerdict::Corrected, c)
        }
        (Some(FeedbackVerdict::Corrected), None) => {
            return Err(unprocessable(
                "A correction needs the class the scan shows (class_id).".into(),
            ));
        }
        (Some(v), Some(c)) => {
            return Err(unprocessable(format!(
                "The verdict {} does not fit class {c:?}: the model answered {:?}.",
                v.as_str(),
                analysis.class_id
            )));
        }
    };
    let given_by = actor::current().map_or_else(String::new, |a| a.name);
    let feedback = store::NewFeedback {
        analysis_id: &analysis.id,
        verdict,
        class_id,
        comment: body.comment.trim(),
        given_by: &given_by,
    };
    let id = store::feedback::insert_feedback(&state.db, &state.keys, &feedback, now_unix())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((id, verdict.as_str()))
}

pub async fn feedback(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<FeedbackBody>, JsonRejection>,
) -> Response {
    let analysis = match find(&state, &id).await {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let body = match body {
        Ok(Json(body)) => body,
        Err(e) => {
            return error(
                e.status(),
                format!(
                    "{} Send JSON like {{\"class_id\": \"glioma_tumor\", \"comment\": \"...\"}} or {{\"verdict\": \"not_assessable\"}}.",
                    e.body_text()
                ),
            );
        }
    };
    match store_feedback(&state, &analysis, &body).await {
        Ok((fid, verdict)) => (
            StatusCode::CREATED,
            Json(json!({ "id": fid, "analysis_id": analysis.id, "verdict": verdict })),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn list_feedback(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let analysis = match find(&state, &id).await {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    match store::feedback::list_feedback(&state.db, &state.keys, &analysis.id).await {
        Ok(items) => Json(json!({ "items": items })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub async fn model(State(state): State<AppState>) -> Response {
    let explainer = state.explainer();
    let m = &explainer.manifest;
    Json(json!({
        "name": m.name,
        "version": m.version(),
        "architecture": m.spec.architecture.name(),
        "input_size": m.spec.input_size,
        "classes": m.classes,
        "uncertainty_threshold": m.uncertainty_threshold,
        // How this server computes answers.
        "precision": if explainer.is_int8() { "int8" } else { "f32" },
        "test_time_augmentation": explainer.tta,
        "int8_calibration": m.int8.as_ref().map(|q| json!({
            "rule": q.rule,
            "top1_agreement_with_f32": q.top1_agreement,
        })),
        "calibration": m.trust.as_ref().map(|t| json!({
            "temperature": t.temperature,
            "validation": t.calibration,
            "uncertainty_rule": t.uncertainty_rule,
        })),
        // When the model says "No tumour", with its validation figures.
        "presence_rule": m.trust.as_ref().and_then(|t| t.presence.as_ref()),
        "input_check": m.trust.as_ref().map(|t| json!({
            "image_bounds": t.image_bounds,
            "feature_distance_threshold": t.features.threshold,
            "feature_threshold_rule": t.features.threshold_rule,
        })),
        "input_gate": explainer.gate().map(|g| json!({
            "name": g.manifest.name,
            "origin": g.origin,
            "version": g.manifest.weights_sha256.chars().take(12).collect::<String>(),
            "kinds": g.manifest.kinds,
            "threshold": g.manifest.threshold,
            "threshold_rule": g.manifest.threshold_rule,
            "trained_on": g.manifest.data,
        })),
        "validation": m.validation,
        "oncolens_version": m.oncolens_version,
        "note": DISCLAIMER,
    }))
    .into_response()
}

pub async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    if store::ping(&state.db).await {
        Json(json!({ "status": "ready", "model": state.explainer().manifest.name, "database": "ok" }))
            .into_response()
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "The database is not reachable.",
        )
    }
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

/// Unknown paths, as the API's error JSON.
pub async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "No such page or endpoint.")
}

/// Every error in the documented format: responses of 400 and above that the framework wrote
/// as plain text (bad JSON, wrong content type, body too large, timeouts, method not allowed)
/// become `{"error": "..."}`. Pages' own HTML and the API's JSON pass unchanged.
pub async fn errors_as_json(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if status.as_u16() < 400 {
        return response;
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("application/json") || content_type.starts_with("text/html") {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if !text.is_empty() {
        text
    } else if status == StatusCode::REQUEST_TIMEOUT {
        "The request took too long and was stopped.".to_string()
    } else {
        status.canonical_reason().unwrap_or("Error").to_string()
    };
    let mut json = error(status, message);
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(v) = parts.headers.get(&name) {
            json.headers_mut().insert(name, v.clone());
        }
    }
    json
}

/// Deletes an analysis with its images and feedback.
pub async fn remove_analysis(state: &AppState, id: &str) -> Result<(), ApiError> {
    let missing = || ApiError::new(StatusCode::NOT_FOUND, "No such analysis.");
    if !valid_id(id) {
        return Err(missing());
    }
    match store::delete_analysis(&state.db, &state.objects, id).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(missing()),
        Err(e) => Err(store_error(e)),
    }
}

/// Deletes a batch with every slice's analysis.
pub async fn remove_batch(state: &AppState, id: &str) -> Result<(), ApiError> {
    let missing = || ApiError::new(StatusCode::NOT_FOUND, "No such batch.");
    if !valid_id(id) {
        return Err(missing());
    }
    match store::delete_batch(&state.db, &state.objects, id).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(missing()),
        Err(e) => Err(store_error(e)),
    }
}

/// `DELETE /api/v1/analyses/{id}`: 204, or 404.
pub async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match remove_analysis(&state, &id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

/// `DELETE /api/v1/batches/{id}`: 204, or 404.
pub async fn delete_batch(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match remove_batch(&state, &id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

/// The audit trail's filter, as the page and the API take it.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub object: Option<String>,
    /// RFC 3339 date or time (`2026-12-01`, `2026-12-01T10:00:00Z`).
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<i64>,
    /// `csv` or `json` (API only).
    pub format: Option<String>,
}

fn parse_when(text: &str, end_of_day: bool) -> Result<i64, String> {
    let full = if text.len() == 10 {
        format!(
            "{text}T{}Z",
            if end_of_day { "23:59:59" } else { "00:00:00" }
        )
    } else {
        text.to_string()
    };
    humantime::parse_rfc3339_weak(&full)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .ok_or_else(|| format!("{text:?} is not a date (YYYY-MM-DD) or an RFC 3339 time"))
}

impl AuditQuery {
    pub fn filter(&self, default_limit: i64) -> Result<crate::security::audit_log::Filter, String> {
        let some = |v: &Option<String>| {
            v.as_ref()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        Ok(crate::security::audit_log::Filter {
            actor: some(&self.actor),
            action: some(&self.action),
            object: some(&self.object),
            since_unix: some(&self.since)
                .map(|t| parse_when(&t, false))
                .transpose()?,
            until_unix: some(&self.until)
                .map(|t| parse_when(&t, true))
                .transpose()?,
            limit: Some(self.limit.unwrap_or(default_limit).clamp(1, 100_000)),
        })
    }
}

/// `GET /api/v1/audit`: the audit trail, filtered, as JSON (`{"items": [...], "verified": ...}`)
/// or CSV (`format=csv`).
pub async fn audit(
    State(state): State<AppState>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "The query string could not be read.",
        );
    };
    let filter = match q.filter(100_000) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let entries = match crate::security::audit_log::list(&state.db, &filter).await {
        Ok(e) => e,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                crate::core::error::sentence(&e),
            );
        }
    };
    match q.format.as_deref() {
        Some("csv") => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"oncolens-audit.csv\"",
                ),
            ],
            crate::security::audit_log::to_csv(&entries),
        )
            .into_response(),
        None | Some("json") => {
            let verified = crate::security::audit_log::verify(&state.db, &state.keys).await;
            Json(json!({
                "items": entries,
                "verified": verified.is_ok(),
                "problem": verified.err().map(|e| crate::core::error::sentence(&e)),
            }))
            .into_response()
        }
        Some(other) => error(
            StatusCode::BAD_REQUEST,
            format!("format={other} is not offered (csv or json)."),
        ),
    }
}
