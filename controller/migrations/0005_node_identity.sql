-- Node identity: operator labels kept apart from what agents report,
-- revocation, registrations waiting for an operator's approval and join
-- tokens made through the API.

-- What the agent reported at its last registration. `labels` stays the
-- operator's set (a new node's first registration seeds it); rows written
-- before this migration keep their mixed set as operator labels.
ALTER TABLE nodes ADD COLUMN reported_labels TEXT NOT NULL DEFAULT '{}';
-- Set by an operator; heartbeats and every node call are refused while set.
ALTER TABLE nodes ADD COLUMN revoked_at TEXT;

-- One row per name: refused retries update it (attempts, latest details)
-- instead of adding rows, so an agent retrying for days stays one row.
CREATE TABLE registration_requests (
    name               TEXT PRIMARY KEY,
    node_id            TEXT NOT NULL,
    reason             TEXT NOT NULL,
    attempts           INTEGER NOT NULL,
    first_attempt_at   TEXT NOT NULL,
    last_attempt_at    TEXT NOT NULL,
    peer_address       TEXT NOT NULL,
    management_address TEXT NOT NULL,
    agent_version      TEXT NOT NULL,
    approved_at        TEXT
);

CREATE TABLE join_tokens (
    id           TEXT PRIMARY KEY,
    description  TEXT NOT NULL,
    node_name    TEXT,
    single_use   INTEGER NOT NULL,
    -- sha256:<hex> of the secret part, never the secret.
    secret       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    expires_at   TEXT,
    last_used_at TEXT,
    last_used_by TEXT,
    revoked_at   TEXT
);
