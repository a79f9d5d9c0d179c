DROP INDEX audit_logs_seed_id_key;
ALTER TABLE audit_logs DROP COLUMN seed_id;
