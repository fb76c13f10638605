-- PostgreSQL twin of migrations/0023_guest_agent_version.sql: each VM's
-- guest agent version as its node agent last reported it; NULL: none.
ALTER TABLE vms ADD COLUMN guest_agent_version TEXT;
