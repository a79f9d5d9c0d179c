-- Idempotent, under a version of its own: it first shipped as 2026-12-04-000001 beside another
-- migration of that version, and diesel keys applied migrations by version alone, so a database
-- that had applied one of the two would have skipped the other. Databases that applied it then
-- run it again here as a no-op.
-- The SQLite twin of migrations/postgres/2026-12-04-000003_passkeys (comments there).
CREATE TABLE IF NOT EXISTS passkeys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    credential_id TEXT NOT NULL UNIQUE,
    user_handle TEXT NOT NULL,
    passkey TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    last_used_at TIMESTAMP
);
CREATE INDEX IF NOT EXISTS passkeys_user_idx ON passkeys (user_id);

CREATE TABLE IF NOT EXISTS passkey_ceremonies (
    token_sha256 TEXT PRIMARY KEY NOT NULL,
    purpose TEXT NOT NULL,
    user_id INTEGER REFERENCES users(id) ON DELETE CASCADE,
    mfa_token_sha256 TEXT,
    ip_address TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL
);
CREATE INDEX IF NOT EXISTS passkey_ceremonies_expires_idx ON passkey_ceremonies (expires_at);
CREATE INDEX IF NOT EXISTS passkey_ceremonies_user_idx ON passkey_ceremonies (user_id);
