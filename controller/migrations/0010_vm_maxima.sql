-- Live resize: the most vCPUs and memory a VM may get without a restart.
-- NULL: the requested size (no room beyond it).
ALTER TABLE vms ADD COLUMN max_vcpus INTEGER;
ALTER TABLE vms ADD COLUMN max_memory_mib INTEGER;
