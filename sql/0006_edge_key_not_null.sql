-- An `edge` table made by hand without a primary key may hold rows with no
-- namespace or no action. They are not edges, and every reader (the `edges`
-- CLI, the digest) expects all three. They are moved, not deleted, to
-- `edge_without_key`; then the three columns are NOT NULL, as a key's are.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM edge WHERE src_ns IS NULL OR dst_ns IS NULL OR action IS NULL) THEN
        CREATE TABLE IF NOT EXISTS edge_without_key (LIKE edge);
        WITH moved AS (
            DELETE FROM edge
            WHERE src_ns IS NULL OR dst_ns IS NULL OR action IS NULL
            RETURNING *
        )
        INSERT INTO edge_without_key SELECT * FROM moved;
    END IF;
END
$$;

ALTER TABLE edge
    ALTER COLUMN src_ns SET NOT NULL,
    ALTER COLUMN dst_ns SET NOT NULL,
    ALTER COLUMN action SET NOT NULL;
