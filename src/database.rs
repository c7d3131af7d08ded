//! Layer 2: the one SQL database of a deployment, opened and migrated in one place for the web
//! app's store, the security tables and the PACS watcher's state.
//!
//! Two engines behind one pool type (sqlx's `Any` driver, chosen by the URL's scheme):
//! - `sqlite://PATH` (or `sqlite::memory:`): embedded, the default of the one-command start;
//! - `postgres://USER@HOST/DB`: a server that several replicas share.
//!
//! The queries are written once, in the SQL both engines speak (`$1` placeholders,
//! `ON CONFLICT`, `RETURNING`); the few places where the engines differ ask [`Dialect`].
//! Each engine has its own migration folder (`migrations/sqlite`, `migrations/postgres`) with
//! the same versions, the same tables and the same columns; a test compares the two schemas.
//! Migrations run at every open.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Executor;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};

use crate::core::error::{Error, Result, StoreError};

/// A pool of connections to the deployment's database (either engine).
pub type Pool = sqlx::AnyPool;
/// A row read from [`Pool`].
pub type Row = sqlx::any::AnyRow;
/// A transaction on [`Pool`].
pub type Transaction = sqlx::Transaction<'static, sqlx::Any>;
/// One connection of [`Pool`] (what a transaction dereferences to).
pub type Connection = sqlx::AnyConnection;

/// The two SQL engines a deployment can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The engine a database URL names; `None` for any other scheme.
    pub fn of_url(url: &str) -> Option<Self> {
        let scheme = url.split(':').next().unwrap_or("");
        match scheme {
            "sqlite" => Some(Self::Sqlite),
            "postgres" | "postgresql" => Some(Self::Postgres),
            _ => None,
        }
    }

    /// The engine behind `pool`.
    pub fn of(pool: &Pool) -> Self {
        match pool.connect_options().database_url.scheme() {
            "sqlite" => Self::Sqlite,
            _ => Self::Postgres,
        }
    }
}

/// The file behind a `sqlite://PATH[?options]` URL (none for in-memory databases).
pub fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or("");
    (!path.is_empty() && path != ":memory:" && !url.contains("mode=memory"))
        .then(|| PathBuf::from(path))
}

/// Lock names of [`begin_serialised`]: one writer at a time per name, across every process
/// and replica on the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteLock {
    /// The audit chain: each entry names the hash of the one before.
    AuditChain = 1,
}

fn db_err(e: impl Into<StoreError>) -> Error {
    Error::Store(e.into())
}

/// Connections per process. SQLite has one writer at a time anyway; a PostgreSQL server is
/// shared by the replicas, each with this many.
const MAX_CONNECTIONS: u32 = 4;

/// Opens (creating if missing) and migrates the database at `url`, e.g. `sqlite://oncolens.db`
/// or `postgres://oncolens@db.internal/oncolens`.
pub async fn open(url: &str) -> Result<Pool> {
    sqlx::any::install_default_drivers();
    let dialect =
        Dialect::of_url(url).ok_or_else(|| db_err(StoreError::UnknownUrl(url.to_string())))?;
    let url = match dialect {
        // rwc: the file is created if missing.
        Dialect::Sqlite if !url.contains("mode=") && !url.contains(":memory:") => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}mode=rwc")
        }
        _ => url.to_string(),
    };
    let options = AnyConnectOptions::from_str(&url).map_err(db_err)?;
    // An in-memory SQLite database lives as long as its connection, and the Any driver opens
    // each connection on a database of its own: one connection, kept for the pool's life.
    let in_memory =
        dialect == Dialect::Sqlite && (url.contains(":memory:") || url.contains("mode=memory"));
    let pool = if in_memory {
        AnyPoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
    } else {
        AnyPoolOptions::new().max_connections(MAX_CONNECTIONS)
    };
    let pool = pool
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if dialect == Dialect::Sqlite {
                    // Readers do not wait for the writer; deleted scans are overwritten with
                    // zeros, not left in free pages; foreign keys are enforced.
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA secure_delete = ON; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
                    )
                    .await?;
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .map_err(db_err)?;
    let migrator = match dialect {
        Dialect::Sqlite => sqlx::migrate!("./migrations/sqlite"),
        Dialect::Postgres => sqlx::migrate!("./migrations/postgres"),
    };
    migrator.run(&pool).await.map_err(db_err)?;
    Ok(pool)
}

/// Begins a transaction in which this writer is the only one holding `lock` until it commits
/// or rolls back, whichever process or replica it runs in: SQLite takes its write lock at once
/// (`BEGIN IMMEDIATE`), PostgreSQL a transaction-scoped advisory lock.
pub async fn begin_serialised(pool: &Pool, lock: WriteLock) -> sqlx::Result<Transaction> {
    match Dialect::of(pool) {
        Dialect::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await,
        Dialect::Postgres => {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(lock as i64)
                .execute(&mut *tx)
                .await?;
            Ok(tx)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_names_the_engine() {
        assert_eq!(Dialect::of_url("sqlite://a.db"), Some(Dialect::Sqlite));
        assert_eq!(Dialect::of_url("sqlite::memory:"), Some(Dialect::Sqlite));
        assert_eq!(
            Dialect::of_url("postgres://u@localhost/db"),
            Some(Dialect::Postgres)
        );
        assert_eq!(
            Dialect::of_url("postgresql://u@localhost/db"),
            Some(Dialect::Postgres)
        );
        assert_eq!(Dialect::of_url("mysql://u@localhost/db"), None);
        assert_eq!(Dialect::of_url("oncolens.db"), None);
    }

    #[tokio::test]
    async fn an_unknown_scheme_is_refused_with_the_accepted_ones() {
        let err = open("mysql://u@localhost/db")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sqlite://") && err.contains("postgres://"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_new_sqlite_file_is_created_and_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        let pool = open(&format!("sqlite://{}", path.display())).await.unwrap();
        assert!(path.exists());
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM analyses")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 0);
        assert_eq!(Dialect::of(&pool), Dialect::Sqlite);
        // The pragmas hold on every connection of the pool.
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }
}
