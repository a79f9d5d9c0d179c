-- The SQLite twin of the PostgreSQL migration. Service accounts and their API keys (issue 15). A key is `iak_<id>_<secret>`: `id` is its
-- public part, looked up here; only the SHA-256 of the secret is kept.
CREATE TABLE service_accounts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name VARCHAR(64) NOT NULL,
    description VARCHAR(256) NOT NULL DEFAULT '',
    created_at TIMESTAMP NOT NULL
);
CREATE UNIQUE INDEX service_accounts_name_lower_idx ON service_accounts (lower(name));

CREATE TABLE api_keys (
    id VARCHAR(32) PRIMARY KEY,
    service_account_id INTEGER NOT NULL REFERENCES service_accounts (id) ON DELETE CASCADE,
    name VARCHAR(64) NOT NULL,
    secret_sha256 VARCHAR(64) NOT NULL,
    -- Space-separated, from the closed list the service knows.
    scopes TEXT NOT NULL,
    -- Space-separated CIDRs; empty means any address.
    allowed_cidrs TEXT NOT NULL DEFAULT '',
    expires_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL,
    revoked_at TIMESTAMP,
    last_used_at TIMESTAMP
);
CREATE INDEX api_keys_service_account_idx ON api_keys (service_account_id);
