-- Flow monitoring: researchers turn it on per platform, operators set each
-- node's export. The node setting is one JSON document (measurelab_api's
-- FlowExport), read and written whole; a missing row means the operator set
-- nothing and the agent's own configuration applies.
ALTER TABLE platforms ADD COLUMN flow_monitoring INTEGER NOT NULL DEFAULT 0;
CREATE TABLE node_flow_export (
    node_id TEXT PRIMARY KEY,
    spec    TEXT NOT NULL
);
