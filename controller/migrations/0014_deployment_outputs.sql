-- Output files a deployment declares (issue 11 §5): a JSON list of absolute
-- paths in each VM, read on demand through the exec channel, never copied.
ALTER TABLE deployments ADD COLUMN outputs TEXT NOT NULL DEFAULT '[]';
