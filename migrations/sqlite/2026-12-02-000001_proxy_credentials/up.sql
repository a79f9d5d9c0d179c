-- Backend proxy mode (BACKEND_PROXY): the proxy credential Login hands out belongs to its
-- session and dies with it. Only its SHA-256 is stored; NULL for sessions opened without it.
ALTER TABLE sessions ADD COLUMN proxy_secret_sha256 TEXT;
