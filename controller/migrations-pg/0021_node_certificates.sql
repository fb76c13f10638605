-- PostgreSQL twin of migrations/0021_node_certificates.sql: the serials of
-- the node certificates the controller issued, and which are revoked.
CREATE TABLE node_certificates (
    serial     TEXT PRIMARY KEY,
    node_id    TEXT NOT NULL,
    issued_at  TEXT NOT NULL,
    not_after  TEXT NOT NULL,
    revoked_at TEXT
);
CREATE INDEX node_certificates_by_node ON node_certificates (node_id);
