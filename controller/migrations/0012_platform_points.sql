-- The point list each platform's MSCS last reported (relayed by the guest
-- and node agents): one row per platform, replaced whole on every report.
-- `points` is a JSON list of measurelab_api's PlatformPoint.
CREATE TABLE platform_points (
    platform_id TEXT PRIMARY KEY REFERENCES platforms(id) ON DELETE CASCADE,
    vm_id       TEXT NOT NULL,
    vm_name     TEXT NOT NULL,
    reported_at TEXT NOT NULL,
    points      TEXT NOT NULL
);
