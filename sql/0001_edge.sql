-- The namespace-edge trail. Existing users query these six columns by hand:
-- they keep their names and meaning forever.
CREATE TABLE IF NOT EXISTS edge (
    src_ns     text        NOT NULL,
    dst_ns     text        NOT NULL,
    action     text        NOT NULL,
    first_seen timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL,
    flow_count bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (src_ns, dst_ns, action)
);

-- A table created by hand before this migration may lack the key that the
-- upsert's ON CONFLICT needs; give it one without touching its rows.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1
        FROM pg_index i
        WHERE i.indrelid = 'edge'::regclass
          AND i.indisunique
          AND i.indnkeyatts = 3
          AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text)
               FROM pg_attribute a
               WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey))
              = ARRAY['action', 'dst_ns', 'src_ns']
    ) THEN
        CREATE UNIQUE INDEX edge_src_ns_dst_ns_action_key ON edge (src_ns, dst_ns, action);
    END IF;
END
$$;
