-- Files that every controller replica of one PostgreSQL database must hold
-- alike (admin and join tokens, the CA that signs node certificates), so a
-- replica started with an empty data directory takes them from here. Only
-- a PostgreSQL store uses the table; SQLite has one controller per
-- database, and keeps the table for the two schemas to stay the same.
CREATE TABLE replica_files (
    name TEXT PRIMARY KEY,
    content TEXT NOT NULL,
    created_at TEXT NOT NULL
);
