-- A time range of the audit log is listed by (created_at, id), newest first, and its keyset
-- pages go on below the last (created_at, id) seen. With both columns in one index, such a page
-- is an index range read backwards from the range's end, n rows long, however far back the range
-- lies; listed by id, PostgreSQL walked the primary key back from the newest row to the range
-- (a day a month ago in a log of a million rows: 30 days of rows per page). It replaces the
-- single-column index, whose every use (the purge's `created_at < cutoff`, the checks of recent
-- events) it serves. Building it on a large log holds writes to it for a while.
CREATE INDEX audit_logs_created_at_id_idx ON audit_logs (created_at, id);
DROP INDEX audit_logs_created_at_idx;
