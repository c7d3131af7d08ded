//! Sign-in and sign-out: `POST /login` (form fields `username`, `password`, optional `next`)
//! starts a new session and sets its cookie (HttpOnly, SameSite=Strict, Secure under TLS);
//! `POST /logout` ends it. Failures are counted per account (lockout, in
//! [`accounts::sign_in`]) and per client address (rate limit, [`Throttle`]); every attempt is
//! audited.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::context;
use serde::Deserialize;

use super::access;
use super::actor::{Actor, Via};
use super::view::render;
use super::{AppState, now_unix};
use crate::security::accounts::{self, SignIn};
use crate::security::audit_log::Outcome;
use crate::security::sessions;

/// Failed sign-ins one address may make within [`THROTTLE_WINDOW_S`] before it must wait.
pub const MAX_FAILURES_PER_ADDRESS: usize = 20;
pub const THROTTLE_WINDOW_S: i64 = 15 * 60;

/// Recent failed sign-ins per client address.
#[derive(Debug, Default)]
pub struct Throttle(Mutex<HashMap<IpAddr, Vec<i64>>>);

impl Throttle {
    /// Seconds until `address` may try again, if it must wait.
    fn wait(&self, address: Option<IpAddr>, now: i64) -> Option<i64> {
        let address = address?;
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let failures = map.get_mut(&address)?;
        failures.retain(|t| now - t < THROTTLE_WINDOW_S);
        (failures.len() >= MAX_FAILURES_PER_ADDRESS)
            .then(|| THROTTLE_WINDOW_S - (now - failures[0]))
    }

    fn failed(&self, address: Option<IpAddr>, now: i64) {
        let Some(address) = address else { return };
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: addresses whose failures are all old are forgotten.
        if map.len() > 10_000 {
            map.retain(|_, v| v.iter().any(|t| now - t < THROTTLE_WINDOW_S));
        }
        map.entry(address).or_default().push(now);
    }
}

#[derive(Deserialize)]
pub struct Next {
    next: Option<String>,
}

/// Where to go after signing in: a path on this server only. No `//host`, no scheme, and only
/// characters that browsers do not drop or rewrite (a tab or a backslash can turn `/\t/x` into
/// `//x`).
fn local_path(next: Option<&str>) -> String {
    let safe = |p: &str| {
        p.len() <= 500
            && p.starts_with('/')
            && !p.starts_with("//")
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/-_.~?=&%+".contains(&b))
    };
    match next {
        Some(p) if safe(p) => p.to_string(),
        _ => "/".into(),
    }
}

fn page_with(state: &AppState, status: StatusCode, next: &str, error: Option<&str>) -> Response {
    render(
        state,
        status,
        "login.html",
        context! { next => next, error => error },
    )
}

pub async fn page(State(state): State<AppState>, Query(q): Query<Next>) -> Response {
    page_with(&state, StatusCode::OK, &local_path(q.next.as_deref()), None)
}

#[derive(Deserialize)]
pub struct Credentials {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

pub async fn sign_in(
    State(state): State<AppState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Form(form): Form<Credentials>,
) -> Response {
    let now = now_unix();
    let address: Option<IpAddr> = actor.address.parse().ok();
    let next = local_path(form.next.as_deref());
    let name: String = form.username.trim().chars().take(64).collect();
    // The actor is the name tried, so that failures against an account can be found.
    let event = |outcome, detail: &str| {
        let mut e = actor
            .event("session.sign_in", &name)
            .outcome(outcome)
            .detail(detail);
        e.actor = if name.is_empty() {
            "anonymous".into()
        } else {
            name.clone()
        };
        e
    };
    if let Some(wait) = state.throttle.wait(address, now) {
        state
            .audit(event(
                Outcome::Denied,
                "too many failed sign-ins from this address",
            ))
            .await;
        let mut r = page_with(
            &state,
            StatusCode::TOO_MANY_REQUESTS,
            &next,
            Some("Too many failed sign-ins from this computer; wait a few minutes."),
        );
        if let Ok(v) = HeaderValue::from_str(&wait.max(1).to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let outcome = match accounts::sign_in(&state.db, &name, &form.password, now).await {
        Ok(o) => o,
        Err(e) => {
            return page_with(
                &state,
                StatusCode::INTERNAL_SERVER_ERROR,
                &next,
                Some(&format!("Signing in failed: {e}")),
            );
        }
    };
    let user = match outcome {
        SignIn::Accepted(user) => user,
        SignIn::Refused => {
            state.throttle.failed(address, now);
            state
                .audit(event(Outcome::Denied, "wrong name or password"))
                .await;
            return page_with(
                &state,
                StatusCode::UNAUTHORIZED,
                &next,
                Some("Wrong name or password."),
            );
        }
        SignIn::Locked { until_unix } => {
            state.throttle.failed(address, now);
            state
                .audit(event(Outcome::Denied, "the account is locked"))
                .await;
            let minutes = ((until_unix - now) as f64 / 60.0).ceil() as i64;
            return page_with(
                &state,
                StatusCode::TOO_MANY_REQUESTS,
                &next,
                Some(&format!(
                    "This account is locked after repeated failed sign-ins; try again in \
                     {minutes} minutes, or ask an administrator to reset the password."
                )),
            );
        }
        SignIn::Disabled => {
            state
                .audit(event(Outcome::Denied, "the account is disabled"))
                .await;
            return page_with(
                &state,
                StatusCode::FORBIDDEN,
                &next,
                Some("This account is disabled."),
            );
        }
    };
    // A new session at every sign-in; the one the browser held (if any) ends.
    if let Via::Session(old) = &actor.via {
        let _ = sessions::end(&state.db, old).await;
    }
    let (cookie, _csrf) = match sessions::start(&state.db, &user, now).await {
        Ok(s) => s,
        Err(e) => {
            return page_with(
                &state,
                StatusCode::INTERNAL_SERVER_ERROR,
                &next,
                Some(&format!("Signing in failed: {e}")),
            );
        }
    };
    state
        .audit(event(Outcome::Ok, &format!("signed in as {}", user.role)))
        .await;
    let mut r = Redirect::to(&next).into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        access::session_cookie(&cookie, state.sessions.absolute.as_secs(), state.tls),
    );
    r
}

pub async fn sign_out(
    State(state): State<AppState>,
    axum::Extension(actor): axum::Extension<Actor>,
) -> Response {
    if let Via::Session(cookie) = &actor.via {
        let _ = sessions::end(&state.db, cookie).await;
        state
            .audit(actor.event("session.sign_out", &actor.name))
            .await;
    }
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut()
        .append(header::SET_COOKIE, access::clear_cookie(state.tls));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        for ok in ["/", "/history", "/analyses/ab12?feedback=saved"] {
            assert_eq!(local_path(Some(ok)), ok);
        }
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/\t/evil.example",
            "/\\evil.example",
            "evil",
            "/a b",
        ] {
            assert_eq!(local_path(Some(bad)), "/", "{bad:?}");
        }
    }

    #[test]
    fn an_address_that_fails_too_often_must_wait() {
        let throttle = Throttle::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..MAX_FAILURES_PER_ADDRESS {
            assert_eq!(throttle.wait(Some(a), 100), None);
            throttle.failed(Some(a), 100);
        }
        assert!(throttle.wait(Some(a), 101).is_some_and(|w| w > 0));
        assert_eq!(throttle.wait(Some(b), 101), None, "others are not affected");
        assert_eq!(
            throttle.wait(Some(a), 100 + THROTTLE_WINDOW_S),
            None,
            "the window passes"
        );
    }
}
