//! Who makes the current request: the [`Actor`] that [`super::access`] establishes for every
//! request, kept in a task-local for the page templates.

use crate::security::Role;
use crate::security::audit_log::Event;

/// How a request is authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// No account exists: the server is open (loopback only).
    Open,
    /// A browser session; the cookie value.
    Session(String),
    Token,
    Anonymous,
}

/// Who makes the current request.
#[derive(Debug, Clone)]
pub struct Actor {
    /// Account name (`local` when open, `anonymous` without credentials).
    pub name: String,
    /// `None`: no role (anonymous).
    pub role: Option<Role>,
    pub via: Via,
    /// The client's address.
    pub address: String,
    /// The token this actor's forms carry.
    pub csrf: String,
}

impl Actor {
    pub fn may(&self, role: Role) -> bool {
        self.role.is_some_and(|r| r >= role)
    }

    /// An audit event by this actor from its address.
    pub fn event(&self, action: &str, object: &str) -> Event {
        Event::new(self.name.clone(), action, object).from_address(self.address.clone())
    }
}

tokio::task_local! {
    /// The actor of the request being handled (for templates).
    pub static CURRENT: Actor;
}

/// The current request's actor, if inside one.
pub fn current() -> Option<Actor> {
    CURRENT.try_with(Clone::clone).ok()
}
