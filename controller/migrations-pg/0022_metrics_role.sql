-- A `metrics` role: a token that reads GET /metrics and nothing else (see
-- controller/migrations/0022_metrics_role.sql). PostgreSQL named the
-- baseline's unnamed CHECKs api_tokens_role_check and api_tokens_check.
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_role_check;
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_role_check
    CHECK (role IN ('operator', 'owner', 'member', 'viewer', 'metrics'));
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_check
    CHECK ((role IN ('operator', 'metrics')) = (tenant_id IS NULL));
