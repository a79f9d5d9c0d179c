ALTER TABLE passkeys DROP COLUMN sign_count;
