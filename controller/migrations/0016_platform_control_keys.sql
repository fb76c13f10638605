-- One control key per platform (issue 10 §5): the secret its MSCS and
-- measurement points share, injected into every program run of the platform
-- as MEASURELAB_CONTROL_KEY. Same table as the per-task keys (0013),
-- `owner_id` being the platform id. Platforms that predate this get one now:
-- SQLite's randomblob() draws from its CSPRNG, seeded by the OS.
INSERT INTO control_keys (owner_id, secret, created_at)
    SELECT id, lower(hex(randomblob(32))), strftime('%Y-%m-%dT%H:%M:%fZ', 'now') FROM platforms;
