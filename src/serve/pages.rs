//! Server-rendered pages (templates and their rendering in [`super::view`]) and the two static
//! assets. Errors are shown as plain sentences on the page.

use axum::Form;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::context;
use serde::Deserialize;

use super::AppState;
use super::api::{self, ApiError, AuditQuery, ExpectedCsrf, FeedbackBody, Received, UploadMode};
use super::store;
use super::view::render;
use crate::security::audit_log;
use crate::security::{accounts, tokens};

pub async fn index(State(state): State<AppState>) -> Response {
    render(&state, StatusCode::OK, "index.html", context! {})
}

/// The form's upload (works without JavaScript): analyse, then show the result page.
pub async fn upload(
    State(state): State<AppState>,
    csrf: Option<axum::Extension<ExpectedCsrf>>,
    multipart: Multipart,
) -> Response {
    let csrf = csrf.map(|c| c.0);
    match api::receive_upload(&state, multipart, UploadMode::Auto, csrf.as_ref()).await {
        Ok(Received::Single(record)) => {
            Redirect::to(&format!("/analyses/{}", record.id)).into_response()
        }
        Ok(Received::Batch(batch, _)) => {
            Redirect::to(&format!("/batches/{}", batch.id)).into_response()
        }
        Err(ApiError { status, message }) => {
            let mut r = render(&state, status, "index.html", context! { error => message });
            if status == StatusCode::SERVICE_UNAVAILABLE {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("2"));
            }
            r
        }
    }
}

/// A batch: the summary of each series, then the strip of slices with their classes and
/// Grad-CAM, each linking to its own result page.
pub async fn batch(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match api::find_batch(&state, &id).await {
        Ok((batch, analyses)) => {
            let json = api::batch_json(&state, &batch, &analyses);
            let explainer = state.explainer();
            let classes = &explainer.manifest.classes;
            render(
                &state,
                StatusCode::OK,
                "batch.html",
                context! { b => json, classes => classes },
            )
        }
        Err(e) => render(
            &state,
            e.status,
            "index.html",
            context! { error => e.message },
        ),
    }
}

/// The PACS watcher: where it looks, how many series it answered, and the series that failed
/// or are parked, with their errors.
pub async fn pacs(State(state): State<AppState>) -> Response {
    use crate::workflows::pacs::state;
    let failures = state::failures(&state.db).await;
    let done = state::done_count(&state.db).await;
    match (failures, done) {
        (Ok(failures), Ok(done)) => {
            let now = super::now_unix();
            let rows: Vec<minijinja::Value> = failures
                .iter()
                .map(|f| {
                    context! {
                        full_key => f.key,
                        key => f.key.chars().take(12).collect::<String>(),
                        state => f.state,
                        attempts => f.attempts,
                        retry_in_s => (f.state == "failed").then(|| (f.next_attempt_unix - now).max(0)),
                        error => f.last_error,
                    }
                })
                .collect();
            render(
                &state,
                StatusCode::OK,
                "pacs.html",
                context! { url => state.pacs_url, done => done, failures => rows },
            )
        }
        (Err(e), _) | (_, Err(e)) => render(
            &state,
            StatusCode::INTERNAL_SERVER_ERROR,
            "index.html",
            context! { error => crate::core::error::sentence(&e) },
        ),
    }
}

/// Releases a failed or parked PACS series for the next poll (the form on /pacs).
pub async fn pacs_retry(State(state): State<AppState>, Path(key): Path<String>) -> Response {
    use crate::workflows::pacs::state;
    if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return render(
            &state,
            StatusCode::NOT_FOUND,
            "index.html",
            context! { error => "No such series." },
        );
    }
    match state::release(&state.db, &key, super::now_unix()).await {
        Ok(true) => Redirect::to("/pacs").into_response(),
        Ok(false) => render(
            &state,
            StatusCode::NOT_FOUND,
            "index.html",
            context! { error => "No such failed or parked series." },
        ),
        Err(e) => render(
            &state,
            StatusCode::INTERNAL_SERVER_ERROR,
            "index.html",
            context! { error => crate::core::error::sentence(&e) },
        ),
    }
}

#[derive(Deserialize)]
pub struct Notice {
    feedback: Option<String>,
}

async fn analysis_page(
    state: &AppState,
    id: &str,
    status: StatusCode,
    notice: Option<&str>,
    error: Option<&str>,
) -> Response {
    let record = match api::find(state, id).await {
        Ok(r) => r,
        Err(e) => {
            return render(
                state,
                e.status,
                "index.html",
                context! { error => e.message },
            );
        }
    };
    let feedback = store::feedback::list_feedback(&state.db, &state.keys, id)
        .await
        .unwrap_or_default();
    let json = api::to_json(state, &record);
    let explainer = state.explainer();
    let validation = explainer.manifest.validation.clone();
    render(
        state,
        status,
        "analysis.html",
        context! {
            a => json,
            classes => explainer.manifest.classes,
            feedback => feedback,
            notice => notice,
            error => error,
            threshold => explainer.manifest.uncertainty_threshold,
            validation => validation,
        },
    )
}

pub async fn analysis(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<Notice>,
) -> Response {
    let notice = q
        .feedback
        .as_deref()
        .map(|_| "Thank you: your feedback was saved.");
    analysis_page(&state, &id, StatusCode::OK, notice, None).await
}

#[derive(Deserialize)]
pub struct FeedbackForm {
    #[serde(default)]
    class_id: String,
    /// `not_assessable` from its button; otherwise the verdict follows from the class.
    #[serde(default)]
    verdict: String,
    /// Where to go afterwards: the review queue sends its own path.
    #[serde(default)]
    next: String,
    #[serde(default)]
    comment: String,
}

pub async fn feedback(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Form(form): Form<FeedbackForm>,
) -> Response {
    let record = match api::find(&state, &id).await {
        Ok(r) => r,
        Err(e) => {
            return render(
                &state,
                e.status,
                "index.html",
                context! { error => e.message },
            );
        }
    };
    let body = FeedbackBody {
        class_id: Some(form.class_id),
        verdict: Some(form.verdict),
        comment: form.comment,
    };
    match api::store_feedback(&state, &record, &body).await {
        Ok(_) if form.next == "/review" => Redirect::to("/review?saved=1").into_response(),
        Ok(_) => Redirect::to(&format!("/analyses/{id}?feedback=saved")).into_response(),
        Err(e) => analysis_page(&state, &id, e.status, None, Some(&e.message)).await,
    }
}

pub async fn history(State(state): State<AppState>) -> Response {
    match store::list_analyses(&state.db, &state.keys, 200, 0).await {
        Ok(rows) => {
            let items: Vec<api::AnalysisJson> =
                rows.iter().map(|a| api::to_json(&state, a)).collect();
            render(
                &state,
                StatusCode::OK,
                "history.html",
                context! { items => items },
            )
        }
        Err(e) => render(
            &state,
            StatusCode::INTERNAL_SERVER_ERROR,
            "history.html",
            context! { error => e.to_string() },
        ),
    }
}

pub async fn model_card(State(state): State<AppState>) -> Response {
    let explainer = state.explainer();
    let m = &explainer.manifest;
    render(
        &state,
        StatusCode::OK,
        "model.html",
        context! {
            m => m,
            architecture => m.spec.architecture.name(),
            card => crate::modelfile::bundle::is_default_model(m).then(|| {
                let mut html = String::new();
                let parser = pulldown_cmark::Parser::new_ext(
                    crate::modelfile::bundle::DEFAULT_MODEL_CARD,
                    pulldown_cmark::Options::ENABLE_TABLES,
                );
                pulldown_cmark::html::push_html(&mut html, parser);
                html
            }),
        },
    )
}

pub async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("static/app.js"),
    )
        .into_response()
}

pub async fn style_css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("static/style.css"),
    )
        .into_response()
}

fn message_page(state: &AppState, status: StatusCode, message: &str) -> Response {
    render(state, status, "index.html", context! { error => message })
}

/// Deletes an analysis (the admin's form on its page), then shows the history.
pub async fn delete_analysis(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match api::remove_analysis(&state, &id).await {
        Ok(()) => Redirect::to("/history").into_response(),
        Err(e) => message_page(&state, e.status, &e.message),
    }
}

/// Deletes a batch with its slices.
pub async fn delete_batch(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match api::remove_batch(&state, &id).await {
        Ok(()) => Redirect::to("/history").into_response(),
        Err(e) => message_page(&state, e.status, &e.message),
    }
}

pub fn rfc3339(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The audit trail for admins: whether the chain verifies, a filter, the newest entries, an
/// export link.
pub async fn audit(State(state): State<AppState>, Query(q): Query<AuditQuery>) -> Response {
    let verified = audit_log::verify(&state.db, &state.keys).await;
    let (entries, error) = match q.filter(500) {
        Ok(filter) => match audit_log::list(&state.db, &filter).await {
            Ok(e) => (e, None),
            Err(e) => (Vec::new(), Some(crate::core::error::sentence(&e))),
        },
        Err(e) => (Vec::new(), Some(e)),
    };
    let rows: Vec<minijinja::Value> = entries
        .iter()
        .map(|e| {
            context! {
                seq => e.seq, at => rfc3339(e.at_unix), actor => e.actor, address => e.address,
                action => e.action, object => e.object, outcome => e.outcome, detail => e.detail,
            }
        })
        .collect();
    let mut query = String::new();
    for (k, v) in [
        ("actor", &q.actor),
        ("action", &q.action),
        ("object", &q.object),
        ("since", &q.since),
        ("until", &q.until),
    ] {
        if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
            query.push('&');
            query.push_str(k);
            query.push('=');
            query.extend(form_urlencoded::byte_serialize(v.as_bytes()));
        }
    }
    render(
        &state,
        if error.is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        },
        "audit.html",
        context! {
            chain_ok => verified.is_ok(),
            chain_entries => verified.as_ref().map(|v| v.entries).unwrap_or(0),
            chain_error => verified.as_ref().err().map(|e| crate::core::error::sentence(e)),
            f => q,
            query => query,
            entries => rows,
            error => error,
        },
    )
}

/// Accounts and tokens (read-only: they are managed from the command line).
pub async fn users(State(state): State<AppState>) -> Response {
    let now = super::now_unix();
    match (
        accounts::list(&state.db).await,
        tokens::list(&state.db).await,
    ) {
        (Ok(users), Ok(tokens)) => {
            let users: Vec<minijinja::Value> = users
                .iter()
                .map(|u| {
                    context! {
                        name => u.name, role => u.role.as_str(), disabled => u.disabled,
                        locked => u.locked_until_unix > now, created => rfc3339(u.created_unix),
                    }
                })
                .collect();
            let tokens: Vec<minijinja::Value> = tokens
                .iter()
                .map(|t| {
                    context! {
                        id => t.id, user => t.user, label => t.label,
                        expires => t.expires_unix.map(rfc3339), revoked_unix => t.revoked_unix,
                    }
                })
                .collect();
            render(
                &state,
                StatusCode::OK,
                "users.html",
                context! { users => users, tokens => tokens },
            )
        }
        (Err(e), _) | (_, Err(e)) => {
            message_page(&state, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
    }
}

#[derive(Deserialize)]
pub struct ReviewNotice {
    saved: Option<String>,
}

/// The review queue: the least certain answer without feedback, with buttons (and keys) to
/// confirm, correct or call it not assessable, then the next ones.
pub async fn review(State(state): State<AppState>, Query(q): Query<ReviewNotice>) -> Response {
    let queue = store::feedback::review_queue(&state.db, &state.keys, 21, 0).await;
    let pending = store::feedback::pending_review(&state.db).await;
    let (rows, pending) = match (queue, pending) {
        (Ok(r), Ok(p)) => (r, p),
        (Err(e), _) | (_, Err(e)) => {
            return render(
                &state,
                StatusCode::INTERNAL_SERVER_ERROR,
                "review.html",
                context! { error => e.sentence(), pending => 0 },
            );
        }
    };
    let explainer = state.explainer();
    let items: Vec<minijinja::Value> = rows
        .iter()
        .map(|(a, entropy)| context! { a => api::to_json(&state, a), entropy => entropy })
        .collect();
    let k = explainer.manifest.classes.len().max(1) as f64;
    render(
        &state,
        StatusCode::OK,
        "review.html",
        context! {
            current => items.first(),
            upcoming => items.get(1..).unwrap_or(&[]),
            pending => pending,
            classes => explainer.manifest.classes,
            max_entropy => k.log2(),
            saved => q.saved.is_some(),
        },
    )
}

/// Agreement between the model and the clinicians, and the registry's versions.
pub async fn feedback_stats(State(state): State<AppState>) -> Response {
    let explainer = state.explainer();
    let loaded = async {
        let items = store::feedback::feedback_items(&state.db).await?;
        let pending = store::feedback::pending_review(&state.db).await?;
        let versions = store::registry::list(&state.db).await?;
        let promoted = store::registry::served(&state.db).await?;
        crate::Result::Ok((items, pending, versions, promoted))
    };
    match loaded.await {
        Ok((items, pending, versions, promoted)) => {
            let agreement = store::Agreement::of(&items, &explainer.manifest.class_ids());
            let versions: Vec<minijinja::Value> = versions
                .iter()
                .map(|v| {
                    context! {
                        version => v.version, parent => v.parent, name => v.name,
                        registered => rfc3339(v.registered_unix),
                    }
                })
                .collect();
            render(
                &state,
                StatusCode::OK,
                "feedback_stats.html",
                context! {
                    a => agreement,
                    pending => pending,
                    versions => versions,
                    promoted => promoted.is_some(),
                    served_version => explainer.manifest.version(),
                },
            )
        }
        Err(e) => {
            let e: crate::Error = e;
            render(
                &state,
                StatusCode::INTERNAL_SERVER_ERROR,
                "index.html",
                context! { error => e.sentence() },
            )
        }
    }
}
