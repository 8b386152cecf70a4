"""fanout-ingest: the front door — Genesys webhooks in, SNS messages out (docs/architecture.md)."""
