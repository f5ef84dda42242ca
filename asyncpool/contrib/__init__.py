"""Optional integrations (metrics exporters, framework helpers); each needs its extra.

Each lives in its own module, so importing one costs nothing else:

* :mod:`asyncpool.contrib.starlette`: the pool's lifespan, health endpoints and a
  cancel-on-disconnect middleware for Starlette applications (extra ``starlette``).
* :mod:`asyncpool.contrib.fastapi`: the same, plus dependencies that lend a connection
  (or a transaction) per request (extra ``fastapi``).
* :mod:`asyncpool.contrib.otel`: OpenTelemetry metrics (extra ``otel``).
* :mod:`asyncpool.contrib.prometheus`: a Prometheus collector (extra ``prometheus``).
* :mod:`asyncpool.contrib.sqlalchemy`: SQLAlchemy's asyncio engine on an asyncpool pool
  (extra ``sqlalchemy``).
* :mod:`asyncpool.contrib.workers`: pool sizing and graceful shutdown for worker
  processes (no extra).

Extras are those of the ``asyncpool-pg`` distribution, e.g.
``pip install 'asyncpool-pg[fastapi,otel]'``.
"""

__all__ = ()
