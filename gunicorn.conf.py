"""gunicorn settings for lbproxy: ``gunicorn -c gunicorn.conf.py`` from the repo root.

The settings live in the package, app/process/gunicorn_conf.py, so that an
installed lbproxy has them too (``lbproxy run`` gives gunicorn that file). This
file runs it afresh each time gunicorn runs this one, at start and on SIGHUP:
runpy, unlike an import, does not keep the module, so a reload re-reads
proxy.yaml.
"""

import runpy

globals().update(runpy.run_module("app.process.gunicorn_conf"))
