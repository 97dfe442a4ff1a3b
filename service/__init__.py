"""dermserve inference service.

Importing this package must stay cheap and free of FastAPI / onnxruntime imports, because
``service.preprocessing`` is shared with the trainer and the exporter (one preprocessing
function means no train/serve skew). The ASGI app lives in :mod:`service.app`.
"""
