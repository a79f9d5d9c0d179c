-- Idempotent, under a version of its own: it first shipped as 2026-12-04-000001 beside another
-- migration of that version, and diesel keys applied migrations by version alone, so a database
-- that had applied one of the two would have skipped the other. Databases that applied it then
-- run it again here as a no-op.
-- Passkeys (WebAuthn, issue 14): as the second factor of a sign-in and for a passwordless one.

-- One row per registered credential. `credential_id`: the credential's id, base64url (unique
-- across users: an authenticator names a credential once). `user_handle`: the UUID this user's
-- authenticators hold as `user.id` (the same for all of a user's passkeys), which a
-- discoverable credential hands back at a passwordless sign-in. `passkey`: webauthn-rs's
-- Passkey as JSON (the public key and the signature counter: not a secret), rewritten after
-- each use so the counter check sees the newest value.
CREATE TABLE IF NOT EXISTS passkeys (
    id SERIAL PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    credential_id VARCHAR(1400) NOT NULL UNIQUE,
    user_handle VARCHAR(36) NOT NULL,
    passkey TEXT NOT NULL,
    name VARCHAR(64) NOT NULL,
    created_at TIMESTAMP NOT NULL,
    last_used_at TIMESTAMP
);
CREATE INDEX IF NOT EXISTS passkeys_user_idx ON passkeys (user_id);

-- A ceremony between its start and its finish: webauthn-rs's state (the challenge) kept
-- server-side, found by the SHA-256 of the ceremony token the client holds. Single use: the
-- finish deletes the row with a conditional DELETE in the transaction that acts on it. Bound to
-- the client address, and to the user (registration, second factor: `user_id`) or to the
-- mfa_token whose second step it is (`mfa_token_sha256`). A passwordless one has no user yet.
-- `purpose`: 'register', 'second_factor' or 'passwordless'.
CREATE TABLE IF NOT EXISTS passkey_ceremonies (
    token_sha256 VARCHAR(64) PRIMARY KEY,
    purpose VARCHAR(16) NOT NULL,
    user_id INTEGER REFERENCES users(id) ON DELETE CASCADE,
    mfa_token_sha256 VARCHAR(64),
    ip_address VARCHAR(45) NOT NULL,
    state TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL
);
CREATE INDEX IF NOT EXISTS passkey_ceremonies_expires_idx ON passkey_ceremonies (expires_at);
CREATE INDEX IF NOT EXISTS passkey_ceremonies_user_idx ON passkey_ceremonies (user_id);
