"""The tooling's process library: start, wait for, measure and stop processes (stdlib only)."""
