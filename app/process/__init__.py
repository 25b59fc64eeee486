"""The gunicorn side: process settings, the master's config, the worker classes."""
