-- The MSCS relays a result at least once (its outbox may repeat one POST
-- after a crash); the run id makes the repeat recognisable.
ALTER TABLE results ADD COLUMN run_id TEXT;
CREATE UNIQUE INDEX results_by_run ON results (task_id, run_id) WHERE run_id IS NOT NULL;
