CREATE INDEX audit_logs_created_at_idx ON audit_logs (created_at);
DROP INDEX audit_logs_created_at_id_idx;
