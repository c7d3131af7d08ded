//! The pages' templates (minijinja, compiled into the binary, autoescaped) and their rendering
//! with what every page shows: the decision-support note, the model, and who is asking (for the
//! navigation, the sign-out form and the forms' CSRF token).

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use minijinja::{Environment, context};

use super::AppState;
use super::actor::{self, Via};
use crate::core::DISCLAIMER;
use crate::security::Role;

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
        ("login.html", include_str!("templates/login.html")),
        ("audit.html", include_str!("templates/audit.html")),
        ("users.html", include_str!("templates/users.html")),
        ("review.html", include_str!("templates/review.html")),
        (
            "feedback_stats.html",
            include_str!("templates/feedback_stats.html"),
        ),
    ] {
        if let Err(e) = env.add_template(name, source) {
            // Templates are compiled in and covered by tests; a broken one is a build defect.
            tracing::error!("template {name}: {e}");
        }
    }
    env
}

/// What the templates know of the one asking: for the navigation, the sign-out form, the
/// forms' CSRF token, and which forms to show.
fn actor_context() -> minijinja::Value {
    match actor::current() {
        Some(a) => context! {
            name => a.name,
            role => a.role.map(Role::as_str),
            csrf => a.csrf,
            open => a.via == Via::Open,
            signed_in => matches!(a.via, Via::Session(_)),
            clinician => a.may(Role::Clinician),
            admin => a.may(Role::Admin),
        },
        None => context! {},
    }
}

pub fn render(state: &AppState, status: StatusCode, name: &str, ctx: minijinja::Value) -> Response {
    let explainer = state.explainer();
    let manifest = &explainer.manifest;
    let base = context! {
        actor => actor_context(),
        disclaimer => DISCLAIMER,
        model_name => manifest.name,
        model_version => manifest.version(),
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
