"""HTTP/1.1 for the gateway, both sides, over httptools: a leaf package.

- :mod:`gateway.http.server`: client connections in, one request at a time, every wait bounded;
  what it refuses, with which status and why, is the table at the top of that module.
- :mod:`gateway.http.client`: the pooled keep-alive connections out to one origin.
- :mod:`gateway.http.body`: the body buffer both sides share (flow control, whole or piecewise
  reads), and :mod:`gateway.http.clock`: the deadline timer both use.

It imports nothing of the gateway: it knows HTTP, not SageMaker. A refused request is reported
to the application as an :class:`~gateway.http.server.HttpError` (status, reason), which the
application renders in its own shape.
"""
