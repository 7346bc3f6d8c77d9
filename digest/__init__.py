"""The daily digest of first-seen edges (posting to Slack)."""
