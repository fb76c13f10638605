-- Guest usage (issue 12 item 6): at most one sample per VM per step of the
-- controller's grid (`bucket`, Unix seconds at the start of the step), so a
-- report costs one indexed INSERT OR IGNORE however often guests heartbeat.
-- Network counters are kept as the guest reported them; rates are computed
-- on read. Rows older than the retention window are pruned by bucket.
CREATE TABLE vm_usage (
    vm_id        TEXT    NOT NULL,
    bucket       INTEGER NOT NULL,
    sampled_ms   INTEGER NOT NULL,
    cpu_count    INTEGER NOT NULL,
    cpu_percent  REAL    NOT NULL,
    memory_total INTEGER NOT NULL,
    memory_used  INTEGER NOT NULL,
    disk_total   INTEGER NOT NULL,
    disk_used    INTEGER NOT NULL,
    rx_bytes     INTEGER NOT NULL,
    tx_bytes     INTEGER NOT NULL,
    PRIMARY KEY (vm_id, bucket)
) WITHOUT ROWID;
CREATE INDEX vm_usage_by_bucket ON vm_usage (bucket);
