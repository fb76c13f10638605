-- Which controller replica holds each node agent's ExecChannel stream, so a
-- replica without it can forward `vm exec` there (docs/postgresql.md). Only
-- replicas on PostgreSQL write it; one SQLite controller has no one to
-- forward to. `url` is the holder's --advertise-url (NULL: it gave none and
-- cannot be forwarded to). `stream` is the holder's own stream number and
-- `attached_ms` when it attached: a detach removes only its own
-- (replica, stream) row, and an older attach never replaces a newer one.
CREATE TABLE exec_channels (
    node_id     TEXT PRIMARY KEY,
    replica     TEXT NOT NULL,
    url         TEXT,
    stream      INTEGER NOT NULL,
    attached_ms INTEGER NOT NULL
);
