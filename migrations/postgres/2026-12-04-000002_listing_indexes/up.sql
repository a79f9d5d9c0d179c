-- Idempotent, under a version of its own: it first shipped as 2026-12-04-000001 beside another
-- migration of that version, and diesel keys applied migrations by version alone, so a database
-- that had applied one of the two would have skipped the other. Databases that applied it then
-- run it again here as a no-op.
-- Filtered pages of the audit log are read newest first (ORDER BY id DESC LIMIT n, keyset pages
-- with id < token). With the filter's column and then id in one index, a page is an index range
-- read backwards from its start, n rows long, at any size of the log; with the filter's column
-- alone the database reads every matching row and sorts them. These replace the single-column
-- indexes, whose every use the new ones serve (the user_id one also serves ON DELETE SET NULL).
-- (SQLite's index entries already end with the rowid, which id is: there the change is only for
-- the two schemas to stay alike.) Building them on a large log holds writes to it for a while.
CREATE INDEX IF NOT EXISTS audit_logs_user_id_id_idx ON audit_logs (user_id, id);
CREATE INDEX IF NOT EXISTS audit_logs_action_id_idx ON audit_logs (action, id);
DROP INDEX IF EXISTS audit_logs_user_id_idx;
DROP INDEX IF EXISTS audit_logs_action_idx;
