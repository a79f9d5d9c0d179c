-- A time range of the audit log for one action (ListAuditLogs with `action` and `since` or
-- `until`) is listed by (created_at, id), newest first. With the action, then the time, in one
-- index, its page is an index range read backwards from the range's end, n rows long, whatever
-- the action's share of the log. Without it SQLite (which keeps no statistics: the service never
-- runs ANALYZE) took the (action, id) index, which bounds the action only, and read and sorted
-- every row of the action: for login_success, 42 % of a log of a million rows, per page. The
-- (action, id) index stays: pages by action alone are listed by id. Building it on a large log
-- holds writes to it for a while.
CREATE INDEX IF NOT EXISTS audit_logs_action_created_at_id_idx ON audit_logs (action, created_at, id);
