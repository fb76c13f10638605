-- Platform vs nodes (a task's compare_with_service_host): the service-host
-- run that follows a platform run. `id` is also the task id the service host
-- posts its document under; `spec` is that run as the nodes get it (JSON of
-- measurelab_api's Task). Open until its document arrives or a newer run of
-- the task (or the task's deletion) closes it; the verdict lives in the
-- platform result document's `comparison`.
CREATE TABLE comparisons (
    id               TEXT PRIMARY KEY,
    task_id          TEXT NOT NULL,
    run_id           TEXT NOT NULL,
    tenant_id        TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('open', 'closed')),
    spec             TEXT NOT NULL,
    service_run_id   TEXT,
    service_document TEXT,
    created_at       TEXT NOT NULL
);
CREATE INDEX comparisons_task ON comparisons (task_id, status);
CREATE INDEX comparisons_open ON comparisons (status, created_at);
