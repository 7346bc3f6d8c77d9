-- An `edge` table made by hand before 0001 may allow NULLs, which no reader
-- expects (and `flow_count + n` would stay NULL forever). Fill them from the
-- row's other time, or now, then forbid them. Rows without NULLs are untouched.
UPDATE edge
SET first_seen = coalesce(first_seen, last_seen, now()),
    last_seen  = coalesce(last_seen, first_seen, now()),
    flow_count = coalesce(flow_count, 0)
WHERE first_seen IS NULL OR last_seen IS NULL OR flow_count IS NULL;

ALTER TABLE edge
    ALTER COLUMN first_seen SET NOT NULL,
    ALTER COLUMN last_seen  SET NOT NULL,
    ALTER COLUMN flow_count SET NOT NULL,
    ALTER COLUMN flow_count SET DEFAULT 0;
