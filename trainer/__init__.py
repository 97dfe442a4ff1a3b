"""Training of the dermserve Keras CNN on HAM10000-style data (``python -m trainer --help``)."""
