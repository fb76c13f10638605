-- Wave 2: virtual platforms, QoS policies, appliances, VMs, programs,
-- deployments, measurement tasks and results, idempotency keys and the
-- per-node desired-state generation.
-- List-valued fields that are always read and written whole (admins,
-- backends, conditions, args, env, a task's spec) are JSON text.

CREATE TABLE node_generations (
    node_id    TEXT PRIMARY KEY,
    generation INTEGER NOT NULL
);

CREATE TABLE idempotency (
    request_id TEXT PRIMARY KEY,
    -- "METHOD path", so a key reused for another request is refused.
    route      TEXT NOT NULL,
    status     INTEGER NOT NULL,
    body       TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE platforms (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    admins      TEXT NOT NULL,
    description TEXT NOT NULL,
    vlan_tag    INTEGER NOT NULL UNIQUE,
    subnet      TEXT NOT NULL UNIQUE,
    gateway     TEXT,
    power_state TEXT NOT NULL CHECK (power_state IN ('running', 'paused')),
    created_at  TEXT NOT NULL,
    generation  INTEGER NOT NULL
);

CREATE TABLE platform_nodes (
    platform_id TEXT NOT NULL REFERENCES platforms(id) ON DELETE CASCADE,
    node_id     TEXT NOT NULL,
    position    INTEGER NOT NULL,
    PRIMARY KEY (platform_id, node_id)
);

CREATE TABLE qos_policies (
    id                   TEXT PRIMARY KEY,
    name                 TEXT NOT NULL UNIQUE,
    ingress_max_kbps     INTEGER NOT NULL,
    ingress_min_kbps     INTEGER,
    ingress_burst_kbytes INTEGER,
    egress_max_kbps      INTEGER,
    egress_min_kbps      INTEGER,
    egress_burst_kbytes  INTEGER,
    created_at           TEXT NOT NULL
);

CREATE TABLE appliances (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    version        TEXT NOT NULL,
    arch           TEXT NOT NULL,
    os             TEXT NOT NULL,
    kernel         TEXT NOT NULL,
    initrd         TEXT NOT NULL,
    disk           TEXT,
    min_memory_mib INTEGER NOT NULL,
    backends       TEXT NOT NULL,
    builtin        INTEGER NOT NULL,
    created_at     TEXT NOT NULL
);

CREATE TABLE vms (
    id                   TEXT PRIMARY KEY,
    name                 TEXT NOT NULL,
    platform_id          TEXT NOT NULL REFERENCES platforms(id),
    node_id              TEXT NOT NULL,
    vcpus                INTEGER NOT NULL,
    memory_mib           INTEGER NOT NULL,
    disk_mib             INTEGER NOT NULL,
    swap_mib             INTEGER NOT NULL,
    appliance_id         TEXT NOT NULL REFERENCES appliances(id),
    qos_policy_id        TEXT REFERENCES qos_policies(id),
    power_state          TEXT NOT NULL CHECK (power_state IN ('running', 'paused', 'stopped')),
    backend              TEXT NOT NULL CHECK (backend IN ('namespace', 'libvirt')),
    address              TEXT NOT NULL,
    mac                  TEXT NOT NULL UNIQUE,
    port_name            TEXT NOT NULL UNIQUE,
    deleting             INTEGER NOT NULL DEFAULT 0,
    actual_state         TEXT NOT NULL,
    restart_required     INTEGER NOT NULL DEFAULT 0,
    guest_last_heartbeat TEXT,
    conditions           TEXT NOT NULL,
    generation           INTEGER NOT NULL,
    observed_generation  INTEGER NOT NULL DEFAULT 0,
    created_at           TEXT NOT NULL,
    UNIQUE (platform_id, name),
    UNIQUE (platform_id, address)
);
CREATE INDEX vms_by_node ON vms (node_id);

CREATE TABLE guest_logs (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    vm_id   TEXT NOT NULL,
    time    TEXT NOT NULL,
    level   TEXT NOT NULL,
    target  TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX guest_logs_by_vm ON guest_logs (vm_id, id);

CREATE TABLE programs (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    sha256     TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    content    BLOB NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE deployments (
    id         TEXT PRIMARY KEY,
    program_id TEXT NOT NULL REFERENCES programs(id),
    args       TEXT NOT NULL,
    env        TEXT NOT NULL,
    stopped    INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);

CREATE TABLE program_runs (
    deployment_id TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    vm_id         TEXT NOT NULL,
    vm_name       TEXT NOT NULL,
    node_id       TEXT NOT NULL,
    status        TEXT NOT NULL,
    exit_code     INTEGER,
    stdout_tail   TEXT NOT NULL DEFAULT '',
    stderr_tail   TEXT NOT NULL DEFAULT '',
    started_at    TEXT,
    finished_at   TEXT,
    PRIMARY KEY (deployment_id, vm_id)
);
CREATE INDEX program_runs_by_node ON program_runs (node_id);

CREATE TABLE tasks (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    -- The task as served (measurelab_api::http::Task) minus status and last_result_id.
    spec           TEXT NOT NULL,
    platform_id    TEXT,
    status         TEXT NOT NULL,
    last_result_id TEXT,
    created_at     TEXT NOT NULL
);

-- Results outlive their task: the history of a deleted periodic task stays
-- queryable by task id.
CREATE TABLE results (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    task_id     TEXT NOT NULL,
    task_name   TEXT NOT NULL,
    received_at TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    -- started_at as Unix milliseconds: RFC 3339 text with varying fraction
    -- digits does not sort as time.
    started_ms  INTEGER NOT NULL,
    document    TEXT NOT NULL
);
CREATE INDEX results_by_task_time ON results (task_id, started_ms);
CREATE INDEX results_by_time ON results (started_ms);
