-- import-seed (issue 16): an audit row copied from the Python service's audit_logs keeps that
-- row's id here, so a re-run recognises it and copies nothing twice. NULL for the service's own.
ALTER TABLE audit_logs ADD COLUMN seed_id INTEGER;
CREATE UNIQUE INDEX audit_logs_seed_id_key ON audit_logs (seed_id);
