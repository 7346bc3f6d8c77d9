-- How far the aggregator has counted each Goldmane's flows: the end of the
-- newest 15-second bucket whose reports are all in `edge`. Written in the same
-- transaction as the edges it covers, so a restart resumes exactly there.
CREATE TABLE IF NOT EXISTS ingest_progress (
    source       text        PRIMARY KEY,
    sealed_until timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
