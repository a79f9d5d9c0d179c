-- Indexes for the housekeeping purges, which delete in batches picked by these predicates: without
-- them each batch would scan the whole table. The revoked one is partial: most sessions never are.
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);
CREATE INDEX sessions_revoked_at_idx ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;
CREATE INDEX login_throttles_updated_at_idx ON login_throttles (updated_at);
CREATE INDEX rate_limits_tat_idx ON rate_limits (tat);
-- audit_logs (created_at) has had its index since 2026-11-23-000001_create_core.
