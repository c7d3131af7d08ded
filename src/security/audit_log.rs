//! The audit trail: every sign-in (and failure), upload, view, export, feedback, deletion and
//! account, token, key or model change, with who, what, which object, when and from where.
//!
//! Append-only: the application only inserts, and triggers in the database refuse UPDATE and
//! DELETE. Each entry's hash is SHA-256 over the previous entry's hash and its own fields, so an
//! edited or removed entry breaks the chain; the chain's head (last sequence number and hash)
//! is signed with HMAC-SHA256 under the deployment's key (which the database never holds), so
//! cutting entries off the end is detected as well. [`verify`] walks the chain.

use serde::Serialize;
use sqlx::Row;

use crate::database::{self, Pool, WriteLock};

use super::keys::KeyRing;
use super::sha256_hex;
use crate::core::error::{AuditError, StoreError};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How an audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    /// Refused for want of a role, a session, a CSRF token, or a wrong password.
    Denied,
    /// Attempted and failed (bad input, an error).
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }
}

/// One thing to record.
#[derive(Debug, Clone)]
pub struct Event {
    /// The account name, `anonymous`, or `cli:<user>` / `system` for work without a request.
    pub actor: String,
    /// What was done, dotted: `session.sign_in`, `analysis.create`, `analysis.view`, ...
    pub action: String,
    /// Which object: an analysis id, an account name, a token id (empty if none).
    pub object: String,
    /// The client's address (empty for the command line).
    pub address: String,
    pub outcome: Outcome,
    /// A sentence of detail; never a patient identifier.
    pub detail: String,
}

impl Event {
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        object: impl Into<String>,
    ) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            object: object.into(),
            address: String::new(),
            outcome: Outcome::Ok,
            detail: String::new(),
        }
    }

    pub fn from_address(mut self, address: impl Into<String>) -> Self {
        self.address = address.into();
        self
    }

    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }
}

/// A recorded entry.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub seq: i64,
    pub at_unix: i64,
    pub actor: String,
    pub action: String,
    pub object: String,
    pub address: String,
    pub outcome: String,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

impl Entry {
    fn computed_hash(&self) -> String {
        let fields = serde_json::json!([
            self.seq,
            self.at_unix,
            self.actor,
            self.action,
            self.object,
            self.address,
            self.outcome,
            self.detail
        ]);
        sha256_hex(&format!("{}\n{fields}", self.prev_hash))
    }
}

fn db(e: sqlx::Error) -> AuditError {
    AuditError::Store(StoreError::Query(e))
}

fn head_message(seq: i64, hash: &str) -> Vec<u8> {
    format!("oncolens audit head {seq} {hash}").into_bytes()
}

/// Appends `event` at time `now`; returns its sequence number. Writers are serialised
/// ([`database::begin_serialised`]), so two processes (the server and the command line, or two
/// replicas) cannot fork the chain.
pub async fn record(
    pool: &Pool,
    keys: &KeyRing,
    event: &Event,
    now: i64,
) -> Result<i64, AuditError> {
    let mut tx = database::begin_serialised(pool, WriteLock::AuditChain)
        .await
        .map_err(db)?;
    let last: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
    let (prev_seq, prev_hash) = last.unwrap_or((0, GENESIS.to_string()));
    let mut entry = Entry {
        seq: prev_seq + 1,
        at_unix: now,
        actor: event.actor.clone(),
        action: event.action.clone(),
        object: event.object.clone(),
        address: event.address.clone(),
        outcome: event.outcome.as_str().to_string(),
        detail: event.detail.clone(),
        prev_hash,
        hash: String::new(),
    };
    entry.hash = entry.computed_hash();
    sqlx::query(
        "INSERT INTO audit_log (seq, at_unix, actor, action, object, address, outcome, detail, \
         prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(entry.seq)
    .bind(entry.at_unix)
    .bind(&entry.actor)
    .bind(&entry.action)
    .bind(&entry.object)
    .bind(&entry.address)
    .bind(&entry.outcome)
    .bind(&entry.detail)
    .bind(&entry.prev_hash)
    .bind(&entry.hash)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    write_head(&mut tx, keys, entry.seq, &entry.hash).await?;
    tx.commit().await.map_err(db)?;
    Ok(entry.seq)
}

async fn write_head(
    tx: &mut sqlx::AnyConnection,
    keys: &KeyRing,
    seq: i64,
    hash: &str,
) -> Result<(), AuditError> {
    sqlx::query(
        "INSERT INTO audit_head (id, seq, hash, signature) VALUES (1, $1, $2, $3) \
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, \
         signature = excluded.signature",
    )
    .bind(seq)
    .bind(hash)
    .bind(keys.sign(&head_message(seq, hash)))
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    Ok(())
}

/// Signs the current head again with the sealing key (after `key rotate`).
pub async fn resign_head(pool: &Pool, keys: &KeyRing) -> Result<(), AuditError> {
    let mut tx = database::begin_serialised(pool, WriteLock::AuditChain)
        .await
        .map_err(db)?;
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
    if let Some((seq, hash)) = head {
        write_head(&mut tx, keys, seq, &hash).await?;
    }
    tx.commit().await.map_err(db)
}

/// What [`verify`] found in a sound chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    pub entries: i64,
    pub head_hash: String,
}

fn entry_of(r: &crate::database::Row) -> Entry {
    Entry {
        seq: r.get("seq"),
        at_unix: r.get("at_unix"),
        actor: r.get("actor"),
        action: r.get("action"),
        object: r.get("object"),
        address: r.get("address"),
        outcome: r.get("outcome"),
        detail: r.get("detail"),
        prev_hash: r.get("prev_hash"),
        hash: r.get("hash"),
    }
}

/// Walks the whole chain: sequence without gaps, each link and hash, and the signed head.
/// The error names the first bad entry.
pub async fn verify(pool: &Pool, keys: &KeyRing) -> Result<Verified, AuditError> {
    let rows = sqlx::query("SELECT * FROM audit_log ORDER BY seq")
        .fetch_all(pool)
        .await
        .map_err(db)?;
    let mut prev = (0i64, GENESIS.to_string());
    for row in &rows {
        let entry = entry_of(row);
        let broken = |problem: &str| AuditError::Broken {
            seq: entry.seq,
            problem: problem.to_string(),
        };
        if entry.seq != prev.0 + 1 {
            return Err(AuditError::Broken {
                seq: prev.0 + 1,
                problem: format!("missing (the next entry is {})", entry.seq),
            });
        }
        if entry.prev_hash != prev.1 {
            return Err(broken("it does not link to the entry before it"));
        }
        if entry.computed_hash() != entry.hash {
            return Err(broken(
                "its content does not match its hash (it was edited)",
            ));
        }
        prev = (entry.seq, entry.hash);
    }
    let head: Option<(i64, String, String)> =
        sqlx::query_as("SELECT seq, hash, signature FROM audit_head WHERE id = 1")
            .fetch_optional(pool)
            .await
            .map_err(db)?;
    match head {
        None if rows.is_empty() => {}
        None => return Err(AuditError::Head("missing".into())),
        Some((seq, hash, signature)) => {
            if !keys.verify(&head_message(seq, &hash), &signature) {
                return Err(AuditError::Head(
                    "its signature does not match (altered, or signed with another key)".into(),
                ));
            }
            if seq != prev.0 || hash != prev.1 {
                return Err(AuditError::Head(format!(
                    "it records {seq} entries but the trail ends at entry {}: entries were \
                     removed from its end",
                    prev.0
                )));
            }
        }
    }
    Ok(Verified {
        entries: prev.0,
        head_hash: prev.1,
    })
}

/// Which entries to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub actor: Option<String>,
    /// Entries whose action starts with this (`analysis.` for every analysis action).
    pub action: Option<String>,
    pub object: Option<String>,
    pub since_unix: Option<i64>,
    pub until_unix: Option<i64>,
    pub limit: Option<i64>,
}

/// Entries matching `filter`, newest first.
pub async fn list(pool: &Pool, filter: &Filter) -> Result<Vec<Entry>, AuditError> {
    let rows = sqlx::query(
        "SELECT * FROM audit_log WHERE ($1 IS NULL OR actor = $1) \
         AND ($2 IS NULL OR substr(action, 1, length($2)) = $2) AND ($3 IS NULL OR object = $3) \
         AND ($4 IS NULL OR at_unix >= $4) AND ($5 IS NULL OR at_unix <= $5) \
         ORDER BY seq DESC LIMIT $6",
    )
    .bind(&filter.actor)
    .bind(&filter.action)
    .bind(&filter.object)
    .bind(filter.since_unix)
    .bind(filter.until_unix)
    .bind(filter.limit.unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await
    .map_err(db)?;
    Ok(rows.iter().map(entry_of).collect())
}

/// Entries as CSV (header first), for export.
pub fn to_csv(entries: &[Entry]) -> Vec<u8> {
    let mut out = csv::Writer::from_writer(Vec::new());
    for e in entries {
        // Writing to a Vec cannot fail.
        let _ = out.serialize(e);
    }
    out.into_inner().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::keys::KeySource;

    async fn pool() -> Pool {
        crate::database::open("sqlite::memory:").await.unwrap()
    }

    #[tokio::test]
    async fn the_chain_verifies_and_an_edit_is_found() {
        let pool = pool().await;
        let keys = KeyRing::load_or_create(&KeySource::Ephemeral).unwrap();
        for i in 0..4 {
            record(
                &pool,
                &keys,
                &Event::new("alice", "analysis.view", format!("a{i}")),
                100 + i,
            )
            .await
            .unwrap();
        }
        assert_eq!(verify(&pool, &keys).await.unwrap().entries, 4);
        // The application cannot change it...
        assert!(
            sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2")
                .execute(&pool)
                .await
                .is_err()
        );
        assert!(
            sqlx::query("DELETE FROM audit_log")
                .execute(&pool)
                .await
                .is_err()
        );
        // ...and someone who drops the trigger is caught.
        sqlx::query("DROP TRIGGER audit_log_append_only_update")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2")
            .execute(&pool)
            .await
            .unwrap();
        match verify(&pool, &keys).await {
            Err(AuditError::Broken { seq: 2, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn cutting_the_end_off_is_found() {
        let pool = pool().await;
        let keys = KeyRing::load_or_create(&KeySource::Ephemeral).unwrap();
        for i in 0..3 {
            record(&pool, &keys, &Event::new("bob", "analysis.create", ""), i)
                .await
                .unwrap();
        }
        sqlx::query("DROP TRIGGER audit_log_append_only_delete")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("DELETE FROM audit_log WHERE seq = 3")
            .execute(&pool)
            .await
            .unwrap();
        assert!(matches!(
            verify(&pool, &keys).await,
            Err(AuditError::Head(_))
        ));
        let filtered = list(
            &pool,
            &Filter {
                action: Some("analysis.".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(filtered.len(), 2);
        let csv = String::from_utf8(to_csv(&filtered)).unwrap();
        assert!(csv.starts_with("seq,at_unix,actor,action"), "{csv}");
    }
}
