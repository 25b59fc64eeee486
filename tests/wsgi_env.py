"""A WSGI environ as gunicorn builds it for a request, for in-process calls."""

from __future__ import annotations

import io


def environ(body: bytes = b"", **extra) -> dict:
    """GET / from 127.0.0.1 on the proxy port; ``extra`` keys replace or add."""
    base = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": "/",
        "PATH_INFO": "/",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
    }
    if body:
        base["CONTENT_LENGTH"] = str(len(body))
    return base | extra
