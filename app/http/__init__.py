"""Serve and parse: HTTP/1.1 with clients.

framing.py is the one HTTP/1.1 framing module, for both directions (the
upstream side reads responses with it too); server.py serves connections with
it; request.py turns a request into what the proxy forwards; headers.py says
which fields cross the proxy.
"""
