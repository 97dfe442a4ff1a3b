"""Pydantic models shared by the service, the exporter, the tests and clients.

- :mod:`schemas.manifest` -- the model directory contract (``manifest.json``).
- :mod:`schemas.api` -- request and response bodies of the HTTP API.
"""
