-- PostgreSQL twin of migrations/0019_replica_files.sql: the admin and join
-- tokens and the CA that every controller replica of this database shares.
CREATE TABLE replica_files (
    name TEXT PRIMARY KEY,
    content TEXT NOT NULL,
    created_at TEXT NOT NULL
);
