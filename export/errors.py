"""The exporter's error (its own module, so that conversion and the parity check both raise it)."""


class ExportError(RuntimeError):
    """Conversion or the parity check failed; nothing was written."""
