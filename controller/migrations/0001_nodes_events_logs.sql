-- Nodes, the event journal and per-node logs.
-- capabilities / resources / labels are JSON documents: they are always read
-- and written whole, and their shape is owned by crates/api, so columns per
-- field would only add migrations without adding queries.
CREATE TABLE nodes (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL UNIQUE,
    secret              TEXT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('online', 'offline')),
    registered_at       TEXT NOT NULL,
    last_heartbeat      TEXT,
    agent_version       TEXT NOT NULL,
    management_address  TEXT NOT NULL,
    capabilities        TEXT NOT NULL,
    resources           TEXT NOT NULL,
    labels              TEXT NOT NULL,
    last_sequence       INTEGER NOT NULL DEFAULT 0,
    observed_generation INTEGER NOT NULL DEFAULT 0,
    desired_generation  INTEGER NOT NULL DEFAULT 0
);

-- AUTOINCREMENT so an id is never reused: clients page with ?after=<id>.
CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    time        TEXT NOT NULL,
    reason      TEXT NOT NULL,
    object_kind TEXT NOT NULL,
    object_id   TEXT NOT NULL,
    message     TEXT NOT NULL
);

CREATE TABLE node_logs (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id TEXT NOT NULL REFERENCES nodes(id),
    time    TEXT NOT NULL,
    level   TEXT NOT NULL,
    target  TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX node_logs_by_node ON node_logs (node_id, id);
