-- The client certificates the controller issued to nodes (at registration
-- and renewal), by serial, so an operator can revoke one certificate
-- without revoking its node (`measurelab node revoke-certificate`). The
-- gRPC peer check refuses a serial with `revoked_at` set. Only the serial
-- and dates are kept: the certificate is public, its key never leaves the
-- node. `not_after` lets a revoked but expired certificate be forgotten:
-- the handshake refuses it anyway.
CREATE TABLE node_certificates (
    serial     TEXT PRIMARY KEY,
    node_id    TEXT NOT NULL,
    issued_at  TEXT NOT NULL,
    not_after  TEXT NOT NULL,
    revoked_at TEXT
);
CREATE INDEX node_certificates_by_node ON node_certificates (node_id);
