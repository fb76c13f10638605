-- Platform control keys can be rotated (POST /v1/platforms/{id}/control-key/rotate):
-- `version` counts the secrets an owner has had, 1 for the one drawn at creation,
-- so a caller (Terraform's control_key_version) can tell a rotation happened. Only
-- the current secret is kept: a rotated key is refused as soon as the programs of
-- the platform run with the new one.
ALTER TABLE control_keys ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
