-- Tenants and API tokens. Every platform, QoS policy, program and task
-- belongs to a tenant; VMs and deployments belong to their platform's and
-- program's tenant. Names become unique per tenant, so the tables whose
-- UNIQUE (name) constraint changes are rebuilt (SQLite cannot drop a column
-- constraint). The migration runner turns foreign-key enforcement off while
-- it runs (a DROP TABLE would otherwise cascade into platform_nodes) and
-- runs PRAGMA foreign_key_check before it commits.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    -- measurelab_api::http::Quota as JSON: read and written whole.
    quota       TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

-- The built-in tenant: owner of every row that existed before tenants did
-- and of what the operator creates without naming a tenant. Its id is fixed
-- so code and tests can name it.
INSERT INTO tenants (id, name, description, quota, created_at)
VALUES ('00000000-0000-4000-8000-000000000000', 'default',
        'Built-in tenant: owns what the operator creates without naming a tenant.',
        '{}', strftime('%Y-%m-%dT%H:%M:%SZ', 'now'));

CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    tenant_id     TEXT REFERENCES tenants(id),
    role          TEXT NOT NULL CHECK (role IN ('operator', 'owner', 'member', 'viewer')),
    -- "sha256:<hex>" of the secret; the secret itself is never stored.
    secret_digest TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    expires_at    TEXT,
    revoked_at    TEXT,
    last_used_at  TEXT,
    CHECK ((role = 'operator') = (tenant_id IS NULL))
);
CREATE INDEX api_tokens_by_tenant ON api_tokens (tenant_id);

-- platforms: UNIQUE (name) -> UNIQUE (tenant_id, name). VLAN tags and
-- subnets stay unique across tenants: they share the wire.
CREATE TABLE platforms_new (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    name        TEXT NOT NULL,
    admins      TEXT NOT NULL,
    description TEXT NOT NULL,
    vlan_tag    INTEGER NOT NULL UNIQUE,
    subnet      TEXT NOT NULL UNIQUE,
    gateway     TEXT,
    power_state TEXT NOT NULL CHECK (power_state IN ('running', 'paused')),
    created_at  TEXT NOT NULL,
    generation  INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);
INSERT INTO platforms_new (id, tenant_id, name, admins, description, vlan_tag, subnet, gateway,
                           power_state, created_at, generation)
SELECT id, '00000000-0000-4000-8000-000000000000', name, admins, description, vlan_tag, subnet,
       gateway, power_state, created_at, generation
FROM platforms;
DROP TABLE platforms;
ALTER TABLE platforms_new RENAME TO platforms;

CREATE TABLE qos_policies_new (
    id                   TEXT PRIMARY KEY,
    tenant_id            TEXT NOT NULL REFERENCES tenants(id),
    name                 TEXT NOT NULL,
    ingress_max_kbps     INTEGER NOT NULL,
    ingress_min_kbps     INTEGER,
    ingress_burst_kbytes INTEGER,
    egress_max_kbps      INTEGER,
    egress_min_kbps      INTEGER,
    egress_burst_kbytes  INTEGER,
    created_at           TEXT NOT NULL,
    UNIQUE (tenant_id, name)
);
INSERT INTO qos_policies_new (id, tenant_id, name, ingress_max_kbps, ingress_min_kbps,
                              ingress_burst_kbytes, egress_max_kbps, egress_min_kbps,
                              egress_burst_kbytes, created_at)
SELECT id, '00000000-0000-4000-8000-000000000000', name, ingress_max_kbps, ingress_min_kbps,
       ingress_burst_kbytes, egress_max_kbps, egress_min_kbps, egress_burst_kbytes, created_at
FROM qos_policies;
DROP TABLE qos_policies;
ALTER TABLE qos_policies_new RENAME TO qos_policies;

CREATE TABLE programs_new (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants(id),
    name       TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    content    BLOB NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (tenant_id, name)
);
INSERT INTO programs_new (id, tenant_id, name, sha256, size_bytes, content, created_at)
SELECT id, '00000000-0000-4000-8000-000000000000', name, sha256, size_bytes, content, created_at
FROM programs;
DROP TABLE programs;
ALTER TABLE programs_new RENAME TO programs;

CREATE TABLE tasks_new (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL REFERENCES tenants(id),
    name           TEXT NOT NULL,
    -- The task as served (measurelab_api::http::Task) minus status and last_result_id.
    spec           TEXT NOT NULL,
    platform_id    TEXT,
    status         TEXT NOT NULL,
    last_result_id TEXT,
    created_at     TEXT NOT NULL,
    UNIQUE (tenant_id, name)
);
INSERT INTO tasks_new (id, tenant_id, name, spec, platform_id, status, last_result_id, created_at)
SELECT id, '00000000-0000-4000-8000-000000000000', name, spec, platform_id, status,
       last_result_id, created_at
FROM tasks;
DROP TABLE tasks;
ALTER TABLE tasks_new RENAME TO tasks;

-- Results outlive their task, so they carry the tenant themselves.
ALTER TABLE results ADD COLUMN tenant_id TEXT NOT NULL
    DEFAULT '00000000-0000-4000-8000-000000000000';
CREATE INDEX results_by_tenant_time ON results (tenant_id, started_ms);

-- NULL: an event about nodes or the shared catalog, for the operator only.
ALTER TABLE events ADD COLUMN tenant_id TEXT;
UPDATE events SET tenant_id = '00000000-0000-4000-8000-000000000000'
WHERE object_kind IN ('platform', 'vm', 'qos_policy', 'program', 'deployment', 'task');
CREATE INDEX events_by_tenant ON events (tenant_id, id);

-- An operator's lookup by name spans tenants: UNIQUE (tenant_id, name)
-- cannot serve it, so the name gets an index of its own.
CREATE INDEX platforms_by_name ON platforms (name);
CREATE INDEX qos_policies_by_name ON qos_policies (name);
CREATE INDEX programs_by_name ON programs (name);
CREATE INDEX tasks_by_name ON tasks (name);
