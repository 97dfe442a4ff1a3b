"""HTTP routes, one router per resource. Thin: parse HTTP, call the dataplane, return schemas.

- :mod:`.health` -- ``/health/live``, ``/health/ready``
- :mod:`.predict` -- ``POST /predict`` (multipart and JSON)
- :mod:`.model` -- ``GET /model``
- :mod:`.v2` -- Open Inference Protocol V2 (``/v2/...``)
- :mod:`.metrics` -- ``GET /metrics`` (Prometheus)
- :mod:`.ui` -- ``GET /`` (``service/static/index.html`` if present)
"""
