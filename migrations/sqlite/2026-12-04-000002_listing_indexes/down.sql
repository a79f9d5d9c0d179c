CREATE INDEX audit_logs_user_id_idx ON audit_logs (user_id);
CREATE INDEX audit_logs_action_idx ON audit_logs (action);
DROP INDEX audit_logs_user_id_id_idx;
DROP INDEX audit_logs_action_id_idx;
