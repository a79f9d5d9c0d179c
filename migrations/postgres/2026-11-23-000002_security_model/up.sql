-- Security model state that replicas must agree on: per-account login throttling (per account
-- and client address, so a stranger cannot lock the owner out from elsewhere) and rate-limit
-- counters (GCRA: one "theoretical arrival time" per key, in microseconds since the epoch).

-- subject: 'user:<id>' for an account, 'login:<hash>' for a name that matches no account (so
-- throttling behaves the same for both and does not reveal which names exist).
CREATE TABLE login_throttles (
    subject VARCHAR(80) NOT NULL,
    ip_address VARCHAR(45) NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    locked_until TIMESTAMP,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (subject, ip_address)
);

CREATE TABLE rate_limits (
    key VARCHAR(128) PRIMARY KEY,
    tat BIGINT NOT NULL
);

-- Failed logins per address in a time window (the suspicious-address alert).
CREATE INDEX audit_logs_ip_created_idx ON audit_logs (ip_address, created_at);
-- Session listing per user, newest first.
CREATE INDEX sessions_user_created_idx ON sessions (user_id, created_at);
