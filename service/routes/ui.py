"""``GET /``: the optional upload page ``service/static/index.html`` (not in the OpenAPI schema)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter()


@router.get("/", include_in_schema=False, operation_id="index")
async def index() -> FileResponse:
    """Serve ``service/static/index.html`` when it exists, else 404."""
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        raise HTTPException(404, "no upload page is installed; see /docs for the API")
    return FileResponse(page, media_type="text/html")
