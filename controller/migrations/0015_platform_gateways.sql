-- Per-platform WireGuard gateways and their peers (issue 11 §1, §2).
--
-- The gateway's private key is kept: the controller hands it to the
-- gateway's node in its desired state (only that node's) on every push.
-- A peer's private key, when the controller generated it, is never stored:
-- it is in the create answer once, like an API token's secret.
CREATE TABLE platform_gateways (
    platform_id    TEXT PRIMARY KEY REFERENCES platforms(id) ON DELETE CASCADE,
    node_id        TEXT NOT NULL,
    listen_port    INTEGER NOT NULL CHECK (listen_port BETWEEN 1 AND 65535),
    private_key    TEXT NOT NULL,
    public_key     TEXT NOT NULL,
    -- The platform's /24 of the controller's tunnel pool.
    tunnel_network TEXT NOT NULL UNIQUE,
    UNIQUE (node_id, listen_port)
);

CREATE TABLE platform_peers (
    id             TEXT PRIMARY KEY,
    platform_id    TEXT NOT NULL REFERENCES platform_gateways(platform_id) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    public_key     TEXT NOT NULL,
    -- "A.B.C.D/32" in the gateway's tunnel network.
    tunnel_address TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    UNIQUE (platform_id, name),
    UNIQUE (platform_id, tunnel_address),
    UNIQUE (platform_id, public_key)
);
