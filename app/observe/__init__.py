"""What happened to each request: its record, metrics, access log and the admin endpoints."""
