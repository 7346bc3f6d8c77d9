-- Indexes for the `edges` CLI (figures: tests/bench/edge_queries.py).
--
-- The primary key (src_ns, dst_ns, action) already answers --src and --sort src.
-- Newest-first listings, --new-since, --seen-since and --stale walk first_seen;
-- --dst, --sort dst and the destination half of --ns and --peers-of use the
-- mirror of the key; --denied and --action walk (action, first_seen).
--
-- last_seen and flow_count are deliberately not indexed: every flush updates
-- them, and an index on either would make every such update write every index.
-- The columns indexed here do not change when an edge is seen again, so with
-- free room on the page (fillfactor) the flush's updates stay heap-only (HOT):
-- on a 100,000-edge trail, 6,000-edge flushes took ~200 ms with the key alone,
-- ~310 ms with these indexes at fillfactor 100, and ~165 ms with them at 75.
-- The fillfactor applies to pages written from now on; no rewrite, light lock.
CREATE INDEX IF NOT EXISTS edge_first_seen_idx ON edge (first_seen);
CREATE INDEX IF NOT EXISTS edge_dst_ns_idx ON edge (dst_ns, src_ns, action);
CREATE INDEX IF NOT EXISTS edge_action_first_seen_idx ON edge (action, first_seen);
ALTER TABLE edge SET (fillfactor = 75);
