-- Per-task control keys (issue 10 §5): the secret a service host's point
-- requires on every send and receive of a task's runs. `owner_id` is a task
-- id or a comparison id (the task id a comparison's service-host run travels
-- under). Handed only to the nodes of that task, in DesiredState; never in an
-- API answer, event or log.
CREATE TABLE control_keys (
    owner_id   TEXT PRIMARY KEY,
    secret     TEXT NOT NULL,
    created_at TEXT NOT NULL
);
-- Tasks and open comparisons that predate keys get one now: SQLite's
-- randomblob() draws from its CSPRNG, seeded by the OS.
INSERT INTO control_keys (owner_id, secret, created_at)
    SELECT id, lower(hex(randomblob(32))), strftime('%Y-%m-%dT%H:%M:%fZ', 'now') FROM tasks;
INSERT INTO control_keys (owner_id, secret, created_at)
    SELECT id, lower(hex(randomblob(32))), strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
    FROM comparisons WHERE status = 'open';
