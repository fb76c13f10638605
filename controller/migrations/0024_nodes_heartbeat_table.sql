-- Nothing to do on SQLite: the PostgreSQL twin of this number sets the
-- nodes table's fillfactor and vacuum throttle (migrations-pg/0024), which
-- SQLite has no counterpart for. Kept so both dialects share numbers.
SELECT 1;
