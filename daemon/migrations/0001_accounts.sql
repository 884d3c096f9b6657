-- Per-user state that is not about models: quota overrides, usage counters and API tokens.
CREATE TABLE quotas (
    uid INTEGER PRIMARY KEY NOT NULL,
    max_concurrent_requests INTEGER,
    max_queued_requests INTEGER,
    tokens_per_minute INTEGER,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE TABLE usage (
    uid INTEGER PRIMARY KEY NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    last_seen_at INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE tokens (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    uid INTEGER NOT NULL,
    -- sha256 of the secret, hex; the secret itself is never stored.
    secret_sha256 TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL DEFAULT 0,
    last_used_at INTEGER NOT NULL DEFAULT 0,
    -- JSON array of model names; empty array = any model the owner may use.
    models TEXT NOT NULL DEFAULT '[]',
    revoked INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX tokens_by_uid ON tokens(uid);
