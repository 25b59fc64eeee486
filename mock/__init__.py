"""The downstream mock: an echo server to balance over in tests, demos and load runs."""
