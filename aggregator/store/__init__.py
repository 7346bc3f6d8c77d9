"""The PostgreSQL store: the only code that writes SQL.

One module per user of the database: `ingest` (the daemon), `migrations`
(schema), and the read side for the CLI and the digest.
"""
