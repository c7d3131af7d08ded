//! Server-rendered pages (minijinja templates compiled into the binary, autoescaped) and the
//! two static assets. Errors are shown as plain sentences on the page.

use axum::Form;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use minijinja::{Environment, context};
use serde::Deserialize;

use super::AppState;
use super::api::{self, ApiError, FeedbackBody, Received, UploadMode};
use super::store;
use crate::core::DISCLAIMER;

pub fn templates() -> Environment<'static> {
    let mut env = Environment::new();
    for (name, source) in [
        ("base.html", include_str!("templates/base.html")),
        ("index.html", include_str!("templates/index.html")),
        ("analysis.html", include_str!("templates/analysis.html")),
        ("history.html", include_str!("templates/history.html")),
        ("model.html", include_str!("templates/model.html")),
        ("batch.html", include_str!("templates/batch.html")),
        ("pacs.html", include_str!("templates/pacs.html")),
    ] {
        if let Err(e) = env.add_template(name, source) {
            // Templates are compiled in and covered by tests; a broken one is a build defect.
            tracing::error!("template {name}: {e}");
        }
    }
    env
}

fn render(state: &AppState, status: StatusCode, name: &str, ctx: minijinja::Value) -> Response {
    let manifest = &state.explainer.manifest;
    let base = context! {
        disclaimer => DISCLAIMER,
        model_name => manifest.name,
        model_version => manifest.weights_sha256.chars().take(12).collect::<String>(),
    };
    let merged = context! { ..ctx, ..base };
    match state
        .templates
        .get_template(name)
        .and_then(|t| t.render(merged))
    {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("page could not be rendered: {e}"),
        )
            .into_response(),
    }
}

pub async fn index(State(state): State<AppState>) -> Response {
    render(&state, StatusCode::OK, "index.html", context! {})
}

/// The form's upload (works without JavaScript): analyse, then show the result page.
pub async fn upload(State(state): State<AppState>, multipart: Multipart) -> Response {
    match api::receive_upload(&state, multipart, UploadMode::Auto).await {
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
            let classes = &state.explainer.manifest.classes;
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
    let feedback = store::list_feedback(&state.db, id)
        .await
        .unwrap_or_default();
    let json = api::to_json(state, &record);
    let validation = state.explainer.manifest.validation.clone();
    render(
        state,
        status,
        "analysis.html",
        context! {
            a => json,
            classes => state.explainer.manifest.classes,
            feedback => feedback,
            notice => notice,
            error => error,
            threshold => state.explainer.manifest.uncertainty_threshold,
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
    class_id: String,
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
        class_id: form.class_id,
        comment: form.comment,
    };
    match api::store_feedback(&state, &record, &body).await {
        Ok(_) => Redirect::to(&format!("/analyses/{id}?feedback=saved")).into_response(),
        Err(e) => analysis_page(&state, &id, e.status, None, Some(&e.message)).await,
    }
}

pub async fn history(State(state): State<AppState>) -> Response {
    match store::list_analyses(&state.db, 200, 0).await {
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
    let m = &state.explainer.manifest;
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
