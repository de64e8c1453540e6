-- Projects' secret tokens are kept as sha256$<nonce>$<hex> (cocalc_hub/auth/project_tokens.py):
-- convert plain ones (empty nonce: they still verify, but a hub cannot re-derive them).
UPDATE projects SET secret_token = 'sha256$$' || encode(sha256(convert_to(secret_token, 'UTF8')), 'hex')
 WHERE secret_token IS NOT NULL AND secret_token NOT LIKE 'sha256$%';
