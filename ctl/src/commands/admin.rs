//! Administration commands: tokens, quotas, usage, per-user endpoints.

use std::fmt::Write as _;

use hyperllama_proto::v1 as pb;

use crate::cli::{QuotaCommand, TokenCommand};
use crate::client::Client;
use crate::format::{now, relative, table};

/// `token ...`.
pub async fn token(client: &mut Client, command: &TokenCommand) -> crate::error::Result<String> {
    match command {
        TokenCommand::Create { name, expires, models, user } => {
            let expires_at =
                expires.map(|d| now() + i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2)).unwrap_or(0);
            let request = pb::CreateTokenRequest {
                name: name.clone(),
                expires_at,
                models: models.clone(),
                user: user.clone(),
            };
            let made = client.create_token(request).await?.into_inner();
            Ok(format!(
                "token {} created; its secret is shown only now:\n{}\nUse it as the API key (OPENAI_API_KEY) or `Authorization: Bearer <secret>`.\n",
                made.id, made.secret
            ))
        }
        TokenCommand::List { user } => {
            let tokens =
                client.list_tokens(pb::ListTokensRequest { user: user.clone() }).await?.into_inner().tokens;
            let now = now();
            let rows: Vec<Vec<String>> = tokens
                .iter()
                .map(|t| {
                    let expires =
                        if t.expires_at == 0 { "never".into() } else { relative(t.expires_at, now) };
                    let used =
                        if t.last_used_at == 0 { "never".into() } else { relative(t.last_used_at, now) };
                    let models = if t.models.is_empty() { "*".into() } else { t.models.join(",") };
                    let state = if t.revoked {
                        "revoked"
                    } else if t.expires_at != 0 && t.expires_at <= now {
                        "expired"
                    } else {
                        "active"
                    };
                    vec![t.id.clone(), t.name.clone(), t.user.clone(), state.into(), models, expires, used]
                })
                .collect();
            Ok(table(&["ID", "NAME", "USER", "STATE", "MODELS", "EXPIRES", "LAST USED"], &rows))
        }
        TokenCommand::Revoke { id } => {
            client.revoke_token(pb::RevokeTokenRequest { id: id.clone() }).await?;
            Ok(format!("revoked token {id}\n"))
        }
    }
}

fn render_quota(q: &pb::Quota) -> String {
    let tpm =
        if q.tokens_per_minute == 0 { "unlimited".to_string() } else { q.tokens_per_minute.to_string() };
    let mut out = String::new();
    let source = if q.is_default { "configured defaults" } else { "override" };
    let _ = writeln!(out, "user {} (uid {}), {source}:", q.user, q.uid);
    let _ = writeln!(out, "  concurrent requests  {}", q.max_concurrent_requests);
    let _ = writeln!(out, "  queued requests      {}", q.max_queued_requests);
    let _ = writeln!(out, "  tokens per minute    {tpm}");
    out
}

/// `quota ...`.
pub async fn quota(client: &mut Client, command: &QuotaCommand) -> crate::error::Result<String> {
    let q = match command {
        QuotaCommand::Show { user } => client.get_quota(pb::GetQuotaRequest { user: user.clone() }).await?,
        QuotaCommand::Set { user, concurrent, queued, tokens_per_minute } => {
            let request = pb::SetQuotaRequest {
                user: user.clone(),
                max_concurrent_requests: *concurrent,
                max_queued_requests: *queued,
                tokens_per_minute: *tokens_per_minute,
                reset: false,
            };
            client.set_quota(request).await?
        }
        QuotaCommand::Reset { user } => {
            client
                .set_quota(pb::SetQuotaRequest { user: user.clone(), reset: true, ..Default::default() })
                .await?
        }
    };
    Ok(render_quota(&q.into_inner()))
}

/// `users`.
pub async fn users(client: &mut Client) -> crate::error::Result<String> {
    let users = client.users(pb::UsersRequest {}).await?.into_inner().users;
    let now = now();
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            let seen = if u.last_seen_at == 0 { "never".into() } else { relative(u.last_seen_at, now) };
            vec![
                u.user.clone(),
                u.uid.to_string(),
                u.requests.to_string(),
                u.prompt_tokens.to_string(),
                u.completion_tokens.to_string(),
                u.active_requests.to_string(),
                seen,
            ]
        })
        .collect();
    Ok(table(
        &["USER", "UID", "REQUESTS", "PROMPT TOKENS", "COMPLETION TOKENS", "ACTIVE", "LAST SEEN"],
        &rows,
    ))
}

/// `endpoint`.
pub async fn endpoint(client: &mut Client, remove: bool) -> crate::error::Result<String> {
    let e = client.endpoint(pb::EndpointRequest { remove }).await?.into_inner();
    if remove {
        return Ok(format!("removed {}\n", e.socket_path));
    }
    let mut out = format!("# your endpoint: {}\n", e.socket_path);
    for line in e.environment {
        let _ = writeln!(out, "export {line}");
    }
    Ok(out)
}
