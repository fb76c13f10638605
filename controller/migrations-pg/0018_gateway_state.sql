-- PostgreSQL twin of migrations/0018_gateway_state.sql: what the controller
-- last heard of each platform gateway (pending, ready, failed) and why.
ALTER TABLE platform_gateways ADD COLUMN state TEXT NOT NULL DEFAULT 'pending';
ALTER TABLE platform_gateways ADD COLUMN state_message TEXT NOT NULL DEFAULT '';
