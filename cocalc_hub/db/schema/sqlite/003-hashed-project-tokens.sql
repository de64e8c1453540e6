-- Projects' secret tokens are kept as sha256$<nonce>$<hex> (cocalc_hub/auth/project_tokens.py):
-- convert plain ones (empty nonce: they still verify, but a hub cannot re-derive them).
-- sha256_hex() is registered on every connection by the SQLite backend.
UPDATE projects SET secret_token = 'sha256$$' || sha256_hex(secret_token)
 WHERE secret_token IS NOT NULL AND secret_token NOT LIKE 'sha256$%';
