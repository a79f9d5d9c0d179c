DROP INDEX sessions_user_created_idx;
DROP INDEX audit_logs_ip_created_idx;
DROP TABLE rate_limits;
DROP TABLE login_throttles;
