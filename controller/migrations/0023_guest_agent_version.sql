-- The version the guest agent of each VM last told its node agent in its
-- hello, as the node agent reports it in VmStatus.guest_agent_version.
-- NULL: none reported (no hello yet, or a node agent older than the field).
ALTER TABLE vms ADD COLUMN guest_agent_version TEXT;
