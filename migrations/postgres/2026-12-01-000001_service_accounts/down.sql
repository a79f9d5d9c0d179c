DROP TABLE api_keys;
DROP TABLE service_accounts;
