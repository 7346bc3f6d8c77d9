-- The digest's memory of what it has told the team. An edge with no row in
-- digest_reported is new. Rows are written only after Slack accepted every
-- message of a run, so a failed run leaves its edges new for the next one.
-- Keyed like `edge`, but with no foreign key: the digest never locks `edge` rows.
CREATE TABLE IF NOT EXISTS digest_reported (
    src_ns      text        NOT NULL,
    dst_ns      text        NOT NULL,
    action      text        NOT NULL,
    reported_at timestamptz NOT NULL DEFAULT now(),
    run_id      uuid        NOT NULL,
    -- listed: a line of its own; summarised: counted in "...and N more" past the
    -- cap; baseline: already there at the first run and taken as known, not posted.
    how         text        NOT NULL CHECK (how IN ('listed', 'summarised', 'baseline')),
    PRIMARY KEY (src_ns, dst_ns, action)
);

-- `edges-digest --since` re-sends what was reported in a window.
CREATE INDEX IF NOT EXISTS digest_reported_reported_at ON digest_reported (reported_at);

-- One row, written by the first run: edges first seen before baseline_cutoff
-- were taken as known. last_run_at (the last successful run) starts the next
-- run's window; it labels the message, while digest_reported decides what is new.
CREATE TABLE IF NOT EXISTS digest_state (
    singleton       boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    baseline_at     timestamptz NOT NULL,
    baseline_cutoff timestamptz NOT NULL,
    last_run_at     timestamptz,
    last_run_id     uuid
);
