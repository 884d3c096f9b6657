//! Per-user records that are not about models: quota overrides over the configured defaults, usage
//! counters, and bearer tokens for non-local HTTP access (only a SHA-256 of each secret is stored).

use std::io::Read;

use hyperllama_proto::v1 as pb;
use nix::unistd::{Uid, User};
use sha2::{Digest as _, Sha256};
use sqlx::{Row, SqlitePool};

use crate::config::QuotaConfig;
use crate::db::now;
use crate::error::{Error, Result};

/// Resolves a user named in a request (a login name or a numeric uid).
pub fn resolve_user(name: &str) -> Result<(u32, String)> {
    if let Ok(uid) = name.parse::<u32>() {
        let user = User::from_uid(Uid::from_raw(uid)).ok().flatten();
        return Ok((uid, user.map(|u| u.name).unwrap_or_else(|| name.to_string())));
    }
    match User::from_name(name) {
        Ok(Some(user)) => Ok((user.uid.as_raw(), user.name)),
        _ => Err(Error::NotFound(format!("no user named `{name}` on this machine"))),
    }
}

/// Name of a uid for display.
pub fn user_name(uid: u32) -> String {
    User::from_uid(Uid::from_raw(uid)).ok().flatten().map(|u| u.name).unwrap_or_else(|| uid.to_string())
}

fn to_u32(v: Option<i64>) -> Option<u32> {
    v.and_then(|v| u32::try_from(v).ok())
}

/// The quota in force for `uid`.
pub async fn quota(db: &SqlitePool, defaults: &QuotaConfig, uid: u32) -> Result<pb::Quota> {
    let row = sqlx::query(
        "SELECT max_concurrent_requests, max_queued_requests, tokens_per_minute FROM quotas WHERE uid = ?",
    )
    .bind(i64::from(uid))
    .fetch_optional(db)
    .await?;
    let (concurrent, queued, tpm) = match &row {
        Some(r) => (
            to_u32(r.get(0)),
            to_u32(r.get(1)),
            r.get::<Option<i64>, _>(2).and_then(|v| u64::try_from(v).ok()),
        ),
        None => (None, None, None),
    };
    Ok(pb::Quota {
        uid,
        user: user_name(uid),
        max_concurrent_requests: concurrent.unwrap_or(defaults.max_concurrent_requests),
        max_queued_requests: queued.unwrap_or(defaults.max_queued_requests),
        tokens_per_minute: tpm.unwrap_or(defaults.tokens_per_minute),
        is_default: row.is_none(),
    })
}

/// Sets (or with `reset`, removes) the override for `uid`; unset fields keep their value.
pub async fn set_quota(db: &SqlitePool, uid: u32, request: &pb::SetQuotaRequest) -> Result<()> {
    if request.reset {
        sqlx::query("DELETE FROM quotas WHERE uid = ?").bind(i64::from(uid)).execute(db).await?;
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO quotas (uid, max_concurrent_requests, max_queued_requests, tokens_per_minute, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(uid) DO UPDATE SET
           max_concurrent_requests = COALESCE(?2, max_concurrent_requests),
           max_queued_requests = COALESCE(?3, max_queued_requests),
           tokens_per_minute = COALESCE(?4, tokens_per_minute),
           updated_at = ?5",
    )
    .bind(i64::from(uid))
    .bind(request.max_concurrent_requests.map(i64::from))
    .bind(request.max_queued_requests.map(i64::from))
    .bind(request.tokens_per_minute.map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
    .bind(now())
    .execute(db)
    .await?;
    Ok(())
}

/// Usage of every user (`only` = one uid).
pub async fn usage(db: &SqlitePool, only: Option<u32>) -> Result<Vec<pb::UserUsage>> {
    let rows = sqlx::query(
        "SELECT uid, requests, prompt_tokens, completion_tokens, last_seen_at FROM usage
         WHERE ?1 IS NULL OR uid = ?1 ORDER BY uid",
    )
    .bind(only.map(i64::from))
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let uid = u32::try_from(r.get::<i64, _>(0)).unwrap_or(u32::MAX);
            let count = |i: usize| u64::try_from(r.get::<i64, _>(i)).unwrap_or(0);
            pb::UserUsage {
                uid,
                user: user_name(uid),
                requests: count(1),
                prompt_tokens: count(2),
                completion_tokens: count(3),
                last_seen_at: r.get(4),
                active_requests: 0,
            }
        })
        .collect())
}

/// Adds one request's tokens to `uid`'s usage.
pub async fn record_usage(
    db: &SqlitePool,
    uid: u32,
    prompt_tokens: u32,
    completion_tokens: u32,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO usage (uid, requests, prompt_tokens, completion_tokens, last_seen_at) VALUES (?1, 1, ?2, ?3, ?4)
         ON CONFLICT(uid) DO UPDATE SET requests = requests + 1, prompt_tokens = prompt_tokens + ?2,
           completion_tokens = completion_tokens + ?3, last_seen_at = ?4",
    )
    .bind(i64::from(uid))
    .bind(i64::from(prompt_tokens))
    .bind(i64::from(completion_tokens))
    .bind(now())
    .execute(db)
    .await?;
    Ok(())
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(Error::io("read /dev/urandom"))?;
    Ok(hex::encode(buf))
}

/// SHA-256 of a token secret, hex.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Issues a token for `uid`; the secret is returned once and only its hash is kept.
pub async fn create_token(
    db: &SqlitePool,
    uid: u32,
    request: &pb::CreateTokenRequest,
) -> Result<pb::CreateTokenResponse> {
    if request.expires_at != 0 && request.expires_at <= now() {
        return Err(Error::InvalidArgument("the token's expiry is in the past".into()));
    }
    let id = random_hex(6)?;
    let secret = format!("hl-{}", random_hex(32)?);
    let name = if request.name.is_empty() { format!("token-{id}") } else { request.name.clone() };
    let models = serde_json::to_string(&request.models).map_err(|e| Error::Internal(e.to_string()))?;
    sqlx::query(
        "INSERT INTO tokens (id, name, uid, secret_sha256, created_at, expires_at, models)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&id)
    .bind(&name)
    .bind(i64::from(uid))
    .bind(secret_hash(&secret))
    .bind(now())
    .bind(request.expires_at)
    .bind(models)
    .execute(db)
    .await?;
    Ok(pb::CreateTokenResponse { id, secret })
}

/// Tokens of one user, or of everyone with `None`.
pub async fn list_tokens(db: &SqlitePool, uid: Option<u32>) -> Result<Vec<pb::TokenInfo>> {
    let rows = sqlx::query(
        "SELECT id, name, uid, created_at, expires_at, last_used_at, models, revoked FROM tokens
         WHERE ?1 IS NULL OR uid = ?1 ORDER BY created_at, id",
    )
    .bind(uid.map(i64::from))
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let uid = u32::try_from(r.get::<i64, _>(2)).unwrap_or(u32::MAX);
            pb::TokenInfo {
                id: r.get(0),
                name: r.get(1),
                uid,
                user: user_name(uid),
                created_at: r.get(3),
                expires_at: r.get(4),
                last_used_at: r.get(5),
                models: serde_json::from_str(r.get::<&str, _>(6)).unwrap_or_default(),
                revoked: r.get::<i64, _>(7) != 0,
            }
        })
        .collect())
}

/// Revokes token `id`; `owner` restricts it to that user's tokens (non-admins).
pub async fn revoke_token(db: &SqlitePool, id: &str, owner: Option<u32>) -> Result<()> {
    let done = sqlx::query("UPDATE tokens SET revoked = 1 WHERE id = ?1 AND (?2 IS NULL OR uid = ?2)")
        .bind(id)
        .bind(owner.map(i64::from))
        .execute(db)
        .await?;
    if done.rows_affected() == 0 {
        // Same answer whether the token is someone else's or absent: ids are not disclosed.
        return Err(Error::NotFound(format!("no token `{id}` of yours (see `hyperctl token list`)")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn db() -> (tempfile::TempDir, SqlitePool) {
        let dir = tempfile::tempdir().unwrap();
        let pool = crate::db::open(dir.path()).await.unwrap();
        (dir, pool)
    }

    #[tokio::test]
    async fn quota_overrides_merge_with_defaults_and_reset() {
        let (_d, db) = db().await;
        let defaults = QuotaConfig::default();
        let q = quota(&db, &defaults, 1234).await.unwrap();
        assert!(q.is_default);
        assert_eq!(q.max_queued_requests, defaults.max_queued_requests);
        let set = pb::SetQuotaRequest { max_concurrent_requests: Some(1), ..Default::default() };
        set_quota(&db, 1234, &set).await.unwrap();
        let set = pb::SetQuotaRequest { tokens_per_minute: Some(500), ..Default::default() };
        set_quota(&db, 1234, &set).await.unwrap();
        let q = quota(&db, &defaults, 1234).await.unwrap();
        assert_eq!((q.max_concurrent_requests, q.tokens_per_minute, q.is_default), (1, 500, false));
        assert_eq!(q.max_queued_requests, defaults.max_queued_requests);
        set_quota(&db, 1234, &pb::SetQuotaRequest { reset: true, ..Default::default() }).await.unwrap();
        assert!(quota(&db, &defaults, 1234).await.unwrap().is_default);
    }

    #[tokio::test]
    async fn usage_accumulates_per_user() {
        let (_d, db) = db().await;
        record_usage(&db, 5, 10, 3).await.unwrap();
        record_usage(&db, 5, 1, 1).await.unwrap();
        record_usage(&db, 6, 2, 0).await.unwrap();
        let mine = usage(&db, Some(5)).await.unwrap();
        assert_eq!((mine[0].requests, mine[0].prompt_tokens, mine[0].completion_tokens), (2, 11, 4));
        assert_eq!(usage(&db, None).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn tokens_are_stored_hashed_and_revocable_only_by_their_owner() {
        let (_d, db) = db().await;
        let made =
            create_token(&db, 1000, &pb::CreateTokenRequest { name: "ci".into(), ..Default::default() })
                .await
                .unwrap();
        let stored: String =
            sqlx::query_scalar("SELECT secret_sha256 FROM tokens").fetch_one(&db).await.unwrap();
        assert_ne!(stored, made.secret);
        assert_eq!(stored, secret_hash(&made.secret));
        assert!(revoke_token(&db, &made.id, Some(1001)).await.is_err(), "another user cannot revoke");
        revoke_token(&db, &made.id, Some(1000)).await.unwrap();
        let listed = list_tokens(&db, Some(1000)).await.unwrap();
        assert!(listed[0].revoked);
        assert!(list_tokens(&db, Some(1001)).await.unwrap().is_empty());
    }
}
