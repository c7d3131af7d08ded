//! Layer 2: the one SQL database of a deployment (SQLite embedded by default), opened and
//! migrated in one place for the web app's store and the PACS watcher's state. Migrations are
//! versioned in `migrations/` and run at every open.

use std::str::FromStr;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

use crate::core::error::{Error, Result, StoreError};

fn db_err(e: impl Into<StoreError>) -> Error {
    Error::Store(e.into())
}

/// Opens (creating if missing) and migrates the database at `url`, e.g. `sqlite://oncolens.db`.
pub async fn open(url: &str) -> Result<SqlitePool> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(db_err)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .foreign_keys(true)
        // Deleted scans are overwritten with zeros, not left in free pages.
        .pragma("secure_delete", "ON");
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .map_err(db_err)?;
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .map_err(db_err)?;
    Ok(pool)
}
