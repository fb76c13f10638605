-- What the controller last heard of each platform gateway: `pending` until
-- its node reports it, then `ready` or `failed` as the node agent found it
-- (WireGuard device, addresses, listen port), or `failed` when its node was
-- revoked. `state_message` says why for anything but `ready`.
ALTER TABLE platform_gateways ADD COLUMN state TEXT NOT NULL DEFAULT 'pending';
ALTER TABLE platform_gateways ADD COLUMN state_message TEXT NOT NULL DEFAULT '';
