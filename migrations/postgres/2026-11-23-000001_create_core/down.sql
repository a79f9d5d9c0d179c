DROP TABLE audit_logs;
DROP TABLE sessions;
DROP TABLE user_backends;
DROP TABLE users;
