"""HTTP routes, one router per resource. Thin: parse HTTP, call the dataplane, return schemas.

- :mod:`.health` -- ``/health/live``, ``/health/ready``
- :mod:`.predict` -- ``POST /predict`` (multipart and JSON)
- :mod:`.jobs` -- ``POST /jobs``, ``GET`` / ``DELETE /jobs/{id}`` (asynchronous jobs)
- :mod:`.model` -- ``GET /model``
- :mod:`.v2` -- Open Inference Protocol V2 (``/v2/...``)
- :mod:`.metrics` -- ``GET /metrics`` (Prometheus)
- :mod:`.ui` -- ``GET /`` (``service/static/index.html`` if present)

Shared: :mod:`.deps` (typed dependencies: state, readiness gate, API key), :mod:`.bodies` (request
bodies: Content-Type, capped reading, JSON off the event loop, image uploads) and :mod:`.multipart`
(the streaming multipart parser behind it).
"""
