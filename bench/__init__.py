"""lbproxy's benchmark: lbproxy against HAProxy, nginx, proxy.py and mitmdump.

Run it with ``bench/run`` (or ``.venv/bin/python -m bench``); docs/bench.md says
what it measures and how. Modules:

  harness  the plan and the run: sessions, cases, measurement
  peers    the upstream nginx and every peer: generated configs, start commands
  load     wrk and its report script (report.lua); h2load for HTTP/2
  tls      the tls section: the certificate, the TLS peers' probe (docs/bench.md#tls)
  wsload   the websocket section's load client: WebSocket echo ping-pong
           (docs/bench.md#websocket)
  report   ratios, added latency, targets, markdown
  sink     a counting StatsD stand-in for lbproxy's "features on" variants

Processes are started, measured (/proc) and stopped by PID with devkit.processes.
"""
