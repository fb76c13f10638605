-- Per-node overcommit ratios set by the operator (PATCH /v1/nodes). NULL
-- means never set: the node follows the controller's default ratios, so a
-- later release may change a default without rewriting rows.
ALTER TABLE nodes ADD COLUMN cpu_overcommit REAL;
ALTER TABLE nodes ADD COLUMN memory_overcommit REAL;
