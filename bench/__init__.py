"""lbproxy's benchmark: lbproxy against HAProxy, nginx and the Python proxies
(proxy.py, mitmdump, and the asyncio ones in bench/plugins/: aiohttp, uvicorn, granian).

Run it with ``bench/run`` (or ``.venv/bin/python -m bench``); docs/bench.md says
what it measures and how. Modules:

  harness  the plan and the run: sessions, cases, measurement
  peers    the upstream nginx and every peer: generated configs, start commands
  load     wrk and its report script (report.lua); h2load for HTTP/2
  tls      the tls section: the certificate, the TLS peers' probe (docs/bench.md#tls)
  wsload   the websocket section's load client: WebSocket echo ping-pong
           (docs/bench.md#websocket)
  report   ratios, added latency, targets, markdown
  hostspeed  the host's speed, sampled through each measured run
           (docs/bench.md#was-the-machine-quiet)
  sink     a counting StatsD stand-in for lbproxy's "features on" variants
  plugins  the Python peers' own code, run from bench/.venv-peers: proxy.py's plugin,
           the asyncio peers (bench_aiohttp.py, bench_asgi.py, bench_forward.py)

Processes are started, measured (/proc) and stopped by PID with devkit.processes.
"""
