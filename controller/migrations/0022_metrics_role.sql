-- A `metrics` role: a token that reads GET /metrics and nothing else, so
-- Prometheus no longer needs an operator token (which could delete every
-- tenant's platforms) to scrape. Like `operator` it belongs to no tenant.
-- SQLite cannot change a CHECK in place: the table is rebuilt with the
-- same columns and rows.
CREATE TABLE api_tokens_new (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    tenant_id     TEXT REFERENCES tenants(id),
    role          TEXT NOT NULL
                  CHECK (role IN ('operator', 'owner', 'member', 'viewer', 'metrics')),
    -- "sha256:<hex>" of the secret; the secret itself is never stored.
    secret_digest TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    expires_at    TEXT,
    revoked_at    TEXT,
    last_used_at  TEXT,
    CHECK ((role IN ('operator', 'metrics')) = (tenant_id IS NULL))
);
INSERT INTO api_tokens_new (id, name, tenant_id, role, secret_digest, created_at, expires_at,
                            revoked_at, last_used_at)
SELECT id, name, tenant_id, role, secret_digest, created_at, expires_at, revoked_at, last_used_at
FROM api_tokens;
DROP TABLE api_tokens;
ALTER TABLE api_tokens_new RENAME TO api_tokens;
CREATE INDEX api_tokens_by_tenant ON api_tokens (tenant_id);
