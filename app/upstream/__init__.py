"""Forward and stream: lbproxy's side of the conversation with upstream hosts.

session.py holds the connection settings (a requests.Session), pool.py the
idle connections, forward.py sends a request and reads the response head,
response.py streams the body back and decides whether the connection is reused.
"""
