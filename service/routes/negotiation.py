"""Response content negotiation (the ``Accept`` header, RFC 9110 §12.5.1) for the routes that answer in
more than one media type: ``POST /predict`` and ``GET /jobs/{id}`` (``application/json``, the default,
or a FHIR ``Bundle`` as ``application/fhir+json``).

Each offered type gets the quality of the most specific range that matches it (``type/subtype`` over
``type/*`` over ``*/*``); the highest quality wins, ties go to the order of the offers (JSON first).
So no ``Accept``, ``*/*``, ``application/*`` and ``application/json`` all keep the JSON answer, and only
an explicit ``application/fhir+json`` (preferred over JSON) selects FHIR. A ``fhirVersion`` parameter
on that range must name R4 (``4.0``), the version served. Nothing acceptable -> 406.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from service.errors import NotAcceptableError
from service.reports import BUNDLE_SCHEMA, FHIR_JSON
from service.routes.bodies import JSON

#: What ``POST /predict`` and ``GET /jobs/{id}`` answer with, in order of preference.
REPORT_MEDIA_TYPES = (JSON, FHIR_JSON)
#: Sent with every negotiated answer (caches must key on ``Accept``).
VARY = {"Vary": "Accept"}
#: ``fhirVersion`` values (FHIR http.html#version-parameter) that name the version served.
_FHIR_VERSIONS = ("4.0",)


@dataclass(frozen=True)
class MediaRange:
    """One element of an ``Accept`` header."""

    type: str
    subtype: str
    params: dict[str, str]
    q: float

    def specificity(self, offer: str) -> int:
        """How specifically this range matches ``offer`` (3 exact, 2 ``type/*``, 1 ``*/*``), 0 if not."""
        otype, _, osub = offer.partition("/")
        if self.type == "*" and self.subtype == "*":
            return 1
        if self.type != otype:
            return 0
        if self.subtype == "*":
            return 2
        if self.subtype != osub:
            return 0
        version = self.params.get("fhirversion")
        if offer == FHIR_JSON and version is not None and not version.startswith(_FHIR_VERSIONS):
            return 0
        return 3


def parse_accept(header: str) -> list[MediaRange]:
    """The media ranges of an ``Accept`` header; malformed elements are skipped."""
    ranges = []
    for element in header.split(","):
        pieces = [p.strip() for p in element.split(";")]
        mtype, sep, subtype = pieces[0].lower().partition("/")
        if not sep or not mtype or not subtype:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for piece in pieces[1:]:
            key, _, value = piece.partition("=")
            key, value = key.strip().lower(), value.strip().strip('"')
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = -1.0
            elif key:
                params[key] = value
        if 0.0 <= q <= 1.0:
            ranges.append(MediaRange(mtype, subtype, params, q))
    return ranges


def negotiate(request: Request, offers: Sequence[str] = REPORT_MEDIA_TYPES) -> str:
    """The media type to answer ``request`` with, among ``offers`` (first = default).

    Raises:
        NotAcceptableError: the ``Accept`` header excludes every offer (-> 406).
    """
    header = request.headers.get("accept", "").strip()
    if not header:
        return offers[0]
    ranges = parse_accept(header)
    best, best_q = None, 0.0
    for offer in offers:
        matches = [(r.specificity(offer), r.q) for r in ranges]
        top = max((s for s, _ in matches), default=0)
        q = max((q for s, q in matches if s == top), default=0.0) if top else 0.0
        if q > best_q:
            best, best_q = offer, q
    if best is None:
        raise NotAcceptableError(f"Accept {header[:200]!r} excludes every media type this route answers with: "
                                 f"{', '.join(offers)}")
    return best


def report_responses(json_what: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entry documenting the 200 answer in both media types (FastAPI merges it with the
    route's ``response_model``, which documents the JSON one). The FHIR example is added when the
    OpenAPI document is built (``service.app``), from a real Bundle."""
    return {200: {
        "description": f"`application/json` (default): {json_what}; `application/fhir+json` (when `Accept` "
                       "asks for it): the same results as an HL7 FHIR R4 Bundle",
        "content": {FHIR_JSON: {"schema": BUNDLE_SCHEMA}},
    }}
