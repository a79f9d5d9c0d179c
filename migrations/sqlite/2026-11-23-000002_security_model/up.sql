-- The SQLite twin of migrations/postgres/2026-11-23-000002_security_model.

-- subject: 'user:<id>' for an account, 'login:<hash>' for a name that matches no account (so
-- throttling behaves the same for both and does not reveal which names exist).
CREATE TABLE login_throttles (
    subject TEXT NOT NULL,
    ip_address TEXT NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    locked_until TIMESTAMP,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (subject, ip_address)
);

CREATE TABLE rate_limits (
    key TEXT PRIMARY KEY NOT NULL,
    tat BIGINT NOT NULL
);

CREATE INDEX audit_logs_ip_created_idx ON audit_logs (ip_address, created_at);
CREATE INDEX sessions_user_created_idx ON sessions (user_id, created_at);
