-- The signature counter of a passkey's newest use, beside its JSON, so that storing a use is
-- one conditional UPDATE that only moves the counter forward: of concurrent sign-ins with one
-- credential (each checked against the counter they read), the one with the highest counter
-- is what stays. 0 until the first use after this migration (the JSON keeps the true value,
-- which the crate checks; this only orders the writes).
ALTER TABLE passkeys ADD COLUMN sign_count BIGINT NOT NULL DEFAULT 0;
