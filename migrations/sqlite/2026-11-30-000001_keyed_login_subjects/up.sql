-- Names that matched no account were kept as a plain SHA-256 prefix; they are HMACs under a
-- server key now. The old rows would never match again: drop them (they only held cool-downs).
DELETE FROM login_throttles WHERE subject LIKE 'login:%';
