-- PostgreSQL twin of migrations/0020_exec_channels.sql: which replica holds
-- each node agent's ExecChannel stream, at which URL, since when.
CREATE TABLE exec_channels (
    node_id     TEXT PRIMARY KEY,
    replica     TEXT NOT NULL,
    url         TEXT,
    stream      BIGINT NOT NULL,
    attached_ms BIGINT NOT NULL
);
