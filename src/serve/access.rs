//! Who is asking, and may they: the one place where every request is authenticated, checked
//! against its route's rule, checked for its CSRF token, and audited.
//!
//! - A request is made by a bearer token (`Authorization: Bearer olt_...`), by a browser
//!   session (cookie), or by nobody. While no account exists the server is open (it then
//!   listens on loopback only, and every page says it is unprotected): the request acts with
//!   every role, as before accounts existed.
//! - [`ROUTES`] gives each route the role it needs and the audit action it records. A route
//!   missing from the table is refused to everyone (fail closed).
//! - Writes from a browser session must carry the session's CSRF token (form field `csrf`);
//!   the JSON API takes writes with a bearer token only, never with the cookie.
//! - The current actor is kept in a task-local for the page templates (name, role, sign-out
//!   form and token), so that handlers need not pass it along.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use super::AppState;
pub use super::actor::{Actor, CURRENT, Via};
pub use super::api::ExpectedCsrf;
use super::api::error;
use crate::security::audit_log::{Event, Outcome};
use crate::security::{Role, sessions, tokens};

/// What a route asks of the one who calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Anyone (sign-in page, assets, health).
    Public,
    /// An account with at least this role.
    Role(Role),
}

/// A route's rule: method, path (as routed), what it needs, what it records in the audit trail.
#[derive(Debug, Clone)]
pub struct RouteRule {
    pub method: Method,
    pub path: &'static str,
    pub need: Need,
    pub audit: Option<&'static str>,
}

const fn rule(
    method: Method,
    path: &'static str,
    need: Need,
    audit: Option<&'static str>,
) -> RouteRule {
    RouteRule {
        method,
        path,
        need,
        audit,
    }
}

const VIEWER: Need = Need::Role(Role::Viewer);
const CLINICIAN: Need = Need::Role(Role::Clinician);
const ADMIN: Need = Need::Role(Role::Admin);

/// Every route of the server. `tests/serve_access.rs` calls each with each role.
pub const ROUTES: &[RouteRule] = &[
    rule(Method::GET, "/login", Need::Public, None),
    rule(Method::POST, "/login", Need::Public, None),
    rule(Method::POST, "/logout", Need::Public, None),
    rule(Method::GET, "/static/app.js", Need::Public, None),
    rule(Method::GET, "/static/style.css", Need::Public, None),
    rule(Method::GET, "/healthz", Need::Public, None),
    rule(Method::GET, "/readyz", Need::Public, None),
    rule(Method::GET, "/api/v1/openapi.json", Need::Public, None),
    rule(Method::GET, "/", VIEWER, None),
    rule(Method::POST, "/", CLINICIAN, Some("analysis.create")),
    rule(Method::GET, "/analyses/{id}", VIEWER, Some("analysis.view")),
    rule(
        Method::POST,
        "/analyses/{id}/feedback",
        CLINICIAN,
        Some("feedback.create"),
    ),
    rule(
        Method::POST,
        "/analyses/{id}/delete",
        ADMIN,
        Some("analysis.delete"),
    ),
    rule(Method::GET, "/history", VIEWER, Some("analysis.list")),
    rule(Method::GET, "/review", CLINICIAN, Some("review.view")),
    rule(
        Method::GET,
        "/api/v1/review",
        CLINICIAN,
        Some("review.view"),
    ),
    rule(
        Method::GET,
        "/admin/feedback",
        ADMIN,
        Some("feedback.statistics"),
    ),
    rule(
        Method::GET,
        "/api/v1/feedback/agreement",
        ADMIN,
        Some("feedback.statistics"),
    ),
    rule(Method::GET, "/model", VIEWER, None),
    rule(Method::GET, "/batches/{id}", VIEWER, Some("batch.view")),
    rule(
        Method::POST,
        "/batches/{id}/delete",
        ADMIN,
        Some("batch.delete"),
    ),
    rule(Method::GET, "/pacs", ADMIN, None),
    rule(Method::POST, "/pacs/{key}/retry", ADMIN, Some("pacs.retry")),
    rule(Method::GET, "/admin/audit", ADMIN, Some("audit.view")),
    rule(Method::GET, "/admin/users", ADMIN, Some("user.list")),
    rule(
        Method::POST,
        "/api/v1/analyses",
        CLINICIAN,
        Some("analysis.create"),
    ),
    rule(
        Method::GET,
        "/api/v1/analyses",
        VIEWER,
        Some("analysis.list"),
    ),
    rule(
        Method::GET,
        "/api/v1/analyses/{id}",
        VIEWER,
        Some("analysis.view"),
    ),
    rule(
        Method::DELETE,
        "/api/v1/analyses/{id}",
        ADMIN,
        Some("analysis.delete"),
    ),
    rule(
        Method::GET,
        "/api/v1/analyses/{id}/image",
        VIEWER,
        Some("analysis.export_image"),
    ),
    rule(
        Method::GET,
        "/api/v1/analyses/{id}/heatmap",
        VIEWER,
        Some("analysis.export_heatmap"),
    ),
    rule(
        Method::POST,
        "/api/v1/analyses/{id}/feedback",
        CLINICIAN,
        Some("feedback.create"),
    ),
    rule(
        Method::GET,
        "/api/v1/analyses/{id}/feedback",
        VIEWER,
        Some("feedback.view"),
    ),
    rule(
        Method::POST,
        "/api/v1/batches",
        CLINICIAN,
        Some("batch.create"),
    ),
    rule(
        Method::GET,
        "/api/v1/batches/{id}",
        VIEWER,
        Some("batch.view"),
    ),
    rule(
        Method::DELETE,
        "/api/v1/batches/{id}",
        ADMIN,
        Some("batch.delete"),
    ),
    rule(Method::GET, "/api/v1/model", VIEWER, None),
    rule(Method::GET, "/api/v1/audit", ADMIN, Some("audit.export")),
    rule(Method::GET, "/metrics", ADMIN, None),
];

/// The rule of a routed request (HEAD is routed as GET).
pub fn rule_for(method: &Method, path: &str) -> Option<&'static RouteRule> {
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    ROUTES
        .iter()
        .find(|r| r.path == path && r.method == *method)
}

fn cookie_value(request: &Request, name: &str) -> Option<String> {
    request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn bearer(request: &Request) -> Option<Result<String, ()>> {
    let value = request.headers().get(header::AUTHORIZATION)?;
    let Ok(text) = value.to_str() else {
        return Some(Err(()));
    };
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "));
    Some(token.map(|t| t.trim().to_string()).ok_or(()))
}

/// A `Set-Cookie` that ends the session cookie in the browser.
pub fn clear_cookie(secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}",
        sessions::COOKIE
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A `Set-Cookie` for a new session.
pub fn session_cookie(value: &str, max_age_s: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}",
        sessions::COOKIE
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn is_api(path: &str) -> bool {
    path.starts_with("/api/") || path == "/metrics"
}

fn unauthorised(path: &str, method: &Method, target: &str) -> Response {
    if !is_api(path) && method == Method::GET {
        let next: String = url_encode(target);
        return Redirect::to(&format!("/login?next={next}")).into_response();
    }
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "Sign in first: send an API token (Authorization: Bearer ...), or sign in at /login.",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"oncolens\""),
    );
    r
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Whether two secrets are equal, in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    subtle::ConstantTimeEq::ct_eq(a.as_bytes(), b.as_bytes()).into()
}

/// The token of a URL-encoded form body, if it has one.
fn form_csrf(body: &[u8]) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.into_owned())
}

/// Authenticates, authorises, checks CSRF and audits every request.
pub async fn enforce(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let now = super::now_unix();
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let method = request.method().clone();
    let target = request
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    let Some(path) = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
    else {
        // Not routed: the fallback answers 404 (or 405) and reveals nothing.
        return next.run(request).await;
    };
    let Some(rule) = rule_for(&method, &path) else {
        // Fail closed: a method the table does not list is not served, whatever the router has.
        return if ROUTES.iter().any(|r| r.path == path) {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{path} does not take {method}."),
            )
        } else {
            error(StatusCode::FORBIDDEN, "This route is not open to anyone.")
        };
    };

    let object = object_of(&request, &path);
    // The audit entry of a refusal: this route's action on its object, and why.
    let denied = |actor: &Actor, why: String| {
        actor
            .event(
                rule.audit.unwrap_or("access"),
                object.as_deref().unwrap_or(""),
            )
            .outcome(Outcome::Denied)
            .detail(format!("{method} {target}: {why}"))
    };
    let mut actor = Actor {
        name: "anonymous".into(),
        role: None,
        via: Via::Anonymous,
        address: address.clone(),
        csrf: String::new(),
    };
    let mut clear_stale_cookie = false;
    match bearer(&request) {
        Some(Ok(token)) => match tokens::authenticate(&state.db, &token, now).await {
            Ok(Some(user)) => {
                actor.name = user.name;
                actor.role = Some(user.role);
                actor.via = Via::Token;
            }
            Ok(None) | Err(_) => {
                state
                    .audit(
                        Event::new("anonymous", "token.use", tokens::id_of(&token))
                            .from_address(address)
                            .outcome(Outcome::Denied)
                            .detail("unknown, revoked or expired token"),
                    )
                    .await;
                let mut r = error(
                    StatusCode::UNAUTHORIZED,
                    "The API token is not valid: unknown, revoked or expired.",
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"oncolens\", error=\"invalid_token\""),
                );
                return r;
            }
        },
        Some(Err(())) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "The Authorization header must be 'Bearer <token>'.",
            );
        }
        None => {
            if let Some(cookie) = cookie_value(&request, sessions::COOKIE) {
                match sessions::resume(&state.db, &cookie, now, state.sessions).await {
                    Ok(Some(session)) => {
                        actor.name = session.user.name;
                        actor.role = Some(session.user.role);
                        actor.via = Via::Session(cookie);
                        actor.csrf = session.csrf;
                    }
                    _ => clear_stale_cookie = true,
                }
            }
            if actor.via == Via::Anonymous && !state.accounts_exist().await {
                actor.name = "local".into();
                actor.role = Some(Role::Admin);
                actor.via = Via::Open;
                actor.csrf = state.open_csrf.clone();
            }
        }
    }

    if let Need::Role(needed) = rule.need {
        if actor.role.is_none() {
            let mut r = unauthorised(&path, &method, &target);
            if clear_stale_cookie {
                r.headers_mut()
                    .append(header::SET_COOKIE, clear_cookie(state.tls));
            }
            return r;
        }
        if !actor.may(needed) {
            state
                .audit(denied(&actor, format!("needs the {needed} role")))
                .await;
            let message = format!(
                "Your account ({}, {}) may not do this: it needs the {needed} role.",
                actor.name,
                actor.role.map_or("none", Role::as_str)
            );
            return refusal(&state, &actor, &path, StatusCode::FORBIDDEN, message).await;
        }
    }

    let write = super::security::is_write(&method);
    let csrf_exempt = matches!(path.as_str(), "/login" | "/logout");
    if write && !csrf_exempt && actor.via != Via::Token {
        if is_api(&path) && matches!(actor.via, Via::Session(_)) {
            return error(
                StatusCode::FORBIDDEN,
                "The API takes changes with an API token (Authorization: Bearer ...), not with \
                 the browser's session.",
            );
        }
        if !is_api(&path) {
            match check_form_csrf(request, &actor.csrf, state.max_body_bytes).await {
                Ok(checked) => request = checked,
                Err((status, message)) => {
                    state
                        .audit(denied(&actor, "missing or wrong CSRF token".into()))
                        .await;
                    return refusal(&state, &actor, &path, status, message).await;
                }
            }
        }
    }

    request.extensions_mut().insert(actor.clone());
    let response = CURRENT.scope(actor.clone(), next.run(request)).await;
    if let Some(action) = rule.audit {
        let status = response.status();
        let object = object.or_else(|| {
            response
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| l.split('?').next())
                .and_then(|l| l.rsplit('/').next())
                .map(str::to_string)
        });
        let outcome = if status.is_success() || status.is_redirection() {
            Outcome::Ok
        } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            Outcome::Denied
        } else {
            Outcome::Failed
        };
        state
            .audit(
                actor
                    .event(action, object.as_deref().unwrap_or(""))
                    .outcome(outcome)
                    .detail(format!("{method} {target} -> {}", status.as_u16())),
            )
            .await;
    }
    let mut response = response;
    if clear_stale_cookie {
        response
            .headers_mut()
            .append(header::SET_COOKIE, clear_cookie(state.tls));
    }
    response
}

/// A refusal: JSON for the API, the home page with the reason for a page.
async fn refusal(
    state: &AppState,
    actor: &Actor,
    path: &str,
    status: StatusCode,
    message: String,
) -> Response {
    if is_api(path) {
        return error(status, message);
    }
    CURRENT
        .scope(actor.clone(), async {
            super::view::render(
                state,
                status,
                "index.html",
                minijinja::context! { error => message },
            )
        })
        .await
}

/// The `{id}` or `{key}` of a routed path.
fn object_of(request: &Request, pattern: &str) -> Option<String> {
    let path = request.uri().path();
    pattern
        .split('/')
        .zip(path.split('/'))
        .find(|(p, _)| p.starts_with('{'))
        .map(|(_, v)| v.chars().take(80).collect())
}

/// Checks the CSRF token of a page's form: a URL-encoded body is read (it is small) and put
/// back; a multipart upload carries an [`ExpectedCsrf`] that the upload reader checks.
async fn check_form_csrf(
    request: Request,
    expected: &str,
    max_body: usize,
) -> Result<Request, (StatusCode, String)> {
    let refused = || {
        (
            StatusCode::FORBIDDEN,
            "Refused: the form's security token is missing or out of date; reload the page and \
             try again."
                .to_string(),
        )
    };
    if expected.is_empty() {
        return Err(refused());
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("multipart/form-data") {
        let mut request = request;
        request
            .extensions_mut()
            .insert(ExpectedCsrf(expected.to_string()));
        return Ok(request);
    }
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return Err(refused());
    }
    let (parts, body) = request.into_parts();
    let limit = super::FORM_BODY_LIMIT.min(max_body);
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "The form is larger than this server takes.".to_string(),
        )
    })?;
    match form_csrf(&bytes) {
        Some(token) if same_secret(&token, expected) => {
            Ok(Request::from_parts(parts, Body::from(bytes)))
        }
        _ => Err(refused()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_is_unique_and_writes_need_a_role_or_are_sign_in() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(!(a.path == b.path && a.method == b.method), "{}", a.path);
            }
            if a.method != Method::GET && a.need == Need::Public {
                assert!(matches!(a.path, "/login" | "/logout"), "{}", a.path);
            }
        }
        assert_eq!(rule_for(&Method::HEAD, "/history").unwrap().need, VIEWER);
        assert!(rule_for(&Method::PUT, "/history").is_none());
    }

    #[test]
    fn form_tokens_are_found() {
        assert_eq!(form_csrf(b"class_id=x&csrf=abc%2B"), Some("abc+".into()));
        assert_eq!(form_csrf(b"class_id=x"), None);
        assert_eq!(url_encode("/analyses/1?x=a b"), "/analyses/1%3Fx%3Da%20b");
    }
}
