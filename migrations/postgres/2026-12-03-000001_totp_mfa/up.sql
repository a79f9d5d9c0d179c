-- A second factor (issue 14): TOTP (RFC 6238) with recovery codes, and the short-lived
-- challenge between a correct password and the second step of a sign-in.

-- One TOTP factor per user. `secret_encrypted`: the raw secret, Fernet-encrypted with the
-- ENCRYPTION_KEY keyring (rotate-keys re-encrypts it). Pending until `confirmed_at` is set;
-- only a confirmed factor changes the login. `last_used_step`: the newest RFC 6238 time step
-- accepted, so a code is accepted once (claimed with a conditional UPDATE).
CREATE TABLE mfa_totp (
    user_id INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    secret_encrypted TEXT NOT NULL,
    confirmed_at TIMESTAMP,
    last_used_step BIGINT NOT NULL DEFAULT 0,
    created_at TIMESTAMP NOT NULL
);

-- Single-use recovery codes, stored as SHA-256 of the code (80 random bits each).
CREATE TABLE mfa_recovery_codes (
    id SERIAL PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    code_sha256 VARCHAR(64) NOT NULL,
    created_at TIMESTAMP NOT NULL,
    used_at TIMESTAMP
);
CREATE INDEX mfa_recovery_codes_user_idx ON mfa_recovery_codes (user_id, code_sha256);

-- The mfa_token Login hands out after a correct password: only its SHA-256 is stored. Bound
-- to the user and the client address; single use (`ended_at`); a few wrong codes end it.
-- `password_sha256`: SHA-256 of the password hash that was checked, so a password change or
-- reset in between ends it.
CREATE TABLE mfa_challenges (
    token_sha256 VARCHAR(64) PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    ip_address VARCHAR(45) NOT NULL,
    password_sha256 VARCHAR(64) NOT NULL,
    -- 'sign_in': VerifyMfa takes it; 'enrol': MFA_REQUIRED_FOR_ADMINS, only TOTP enrolment takes it.
    purpose VARCHAR(16) NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    ended_at TIMESTAMP
);
CREATE INDEX mfa_challenges_user_idx ON mfa_challenges (user_id);
