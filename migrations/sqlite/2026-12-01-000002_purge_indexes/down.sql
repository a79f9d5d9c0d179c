DROP INDEX rate_limits_tat_idx;
DROP INDEX login_throttles_updated_at_idx;
DROP INDEX sessions_revoked_at_idx;
DROP INDEX sessions_expires_at_idx;
