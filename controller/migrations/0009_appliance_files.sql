-- Appliance files the controller stores (content-addressed under
-- <data_dir>/appliances/sha256/) and sends to the nodes. NULL: the file is
-- a path that already exists on every node (the column kernel/initrd/disk).
ALTER TABLE appliances ADD COLUMN kernel_sha256 TEXT;
ALTER TABLE appliances ADD COLUMN initrd_sha256 TEXT;
ALTER TABLE appliances ADD COLUMN disk_sha256 TEXT;
