//! The daemon's SQLite database (`<state_dir>/hyperllama.db`): opened with WAL,
//! `synchronous=FULL`, foreign keys and a busy timeout, migrated from `daemon/migrations`, and
//! checked with `quick_check` at every start.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::error::{Error, Result};

/// File name of the database inside the state directory.
pub const DB_FILE: &str = "hyperllama.db";

/// Opens (creating if needed), migrates and checks the database.
pub async fn open(state_dir: &Path) -> Result<SqlitePool> {
    let path = state_dir.join(DB_FILE);
    let options = SqliteConnectOptions::from_str("sqlite://")?
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
    let check: String = sqlx::query_scalar("PRAGMA quick_check").fetch_one(&pool).await?;
    if check != "ok" {
        return Err(Error::Internal(format!(
            "database {} failed quick_check: {check}; restore it from a backup or move it aside",
            path.display()
        )));
    }
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_with_wal_full_sync_and_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let pool = open(dir.path()).await.unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&pool).await.unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&pool).await.unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(&pool).await.unwrap();
        assert_eq!(fk, 1);
        pool.close().await;
        // A second open (restart) migrates nothing twice.
        open(dir.path()).await.unwrap();
    }
}
