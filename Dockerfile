# lbproxy images. No build engine runs in CI: this file is checked by hadolint
# (tests/tools/test_deploy.py), its stages are assembled and run by
# tests/tools/test_image.py, and it is built by hand, as docs/deploy.md shows:
#   docker build -t lbproxy:0.1.0 .                           # the proxy (default target)
#   docker build --target mock -t lbproxy-mock:0.1.0 .        # the demo's mock upstream

# --- runtime dependencies: rebuilt only when requirements.txt changes ---------
FROM python:3.11.14-slim-bookworm AS runtime

# No PYTHONUNBUFFERED: the access log flushes itself each second; unbuffered,
# a stdout log would cost a write() per request.
# PYTHONOPTIMIZE=2 (python -OO): no docstrings in memory (docs/deploy.md,
# "Bytecode, compiled at build time"). Its bytecode is compiled at build time,
# below and by pip at this level for what it installs: the image's uid cannot
# write any.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONOPTIMIZE=2 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The base image ships its standard library without bytecode: each process would
# compile every module it imports, at every start, and keep the compiler's
# leftovers in memory.
RUN python -m compileall -q -o 2 /usr/local/lib/python3.11

# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 lbproxy \
    && useradd --system --no-log-init --uid 10001 --gid lbproxy \
       --home-dir /nonexistent --shell /usr/sbin/nologin lbproxy

WORKDIR /app
COPY requirements.txt .
# Pinned versions; code is copied only in the stages below, so a code change
# reuses this layer.
RUN pip install --no-cache-dir -r requirements.txt

# --- lbproxy installed: the `lbproxy` command and the app and mock packages ----
FROM runtime AS package

COPY pyproject.toml README.md requirements.txt /src/
COPY app/ /src/app/
COPY mock/ /src/mock/
# Its requirements are the layer above; this adds the packages and the command.
RUN pip install --no-cache-dir --no-deps /src

# --- the mock upstream (the demo's lbserverdown) -------------------------------
# It serves with the proxy's gunicorn worker (app.process.worker): the package
# has both.
FROM package AS mock

USER 10001:10001
EXPOSE 9001
# The mock answers 200 to any path.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9001/', timeout=2)"]
ENTRYPOINT ["python", "-m", "mock", "--address", "0.0.0.0", "--port", "9001"]
# The identity it shows in answers; Kubernetes passes the pod name instead.
CMD ["--name", "lbserverdown"]

# --- the proxy (default target: last stage) ------------------------------------
FROM package AS proxy

# PROXY_CONFIG: where proxy.yaml is read; Kubernetes mounts its ConfigMap there.
# PROXY_WORKERS: gunicorn workers. Set it: os.cpu_count() in a container is the
# node's CPU count, not the container's CPU limit.
ENV PROXY_CONFIG=/etc/lbproxy/proxy.yaml \
    PROXY_WORKERS=2 \
    PROXY_WORKER_CONNECTIONS=1000

COPY proxy.yaml /etc/lbproxy/proxy.yaml

USER 10001:10001
# 8080: proxy.listen (traffic); 9901: proxy.admin (/healthz, /readyz, /status).
EXPOSE 8080 9901
# Liveness on the admin listener (the slim image has no curl). If proxy.yaml
# moves proxy.admin.port, override this check (docker run --health-cmd ...).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2)"]
# gunicorn with lbproxy's settings; arguments after the image name go to gunicorn.
ENTRYPOINT ["lbproxy", "run"]
