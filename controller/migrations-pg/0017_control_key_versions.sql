-- PostgreSQL twin of migrations/0017_control_key_versions.sql: platform control
-- keys can be rotated; `version` counts the secrets an owner has had, 1 for the
-- one drawn at creation.
ALTER TABLE control_keys ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
