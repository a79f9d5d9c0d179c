ALTER TABLE sessions DROP COLUMN proxy_secret_sha256;
