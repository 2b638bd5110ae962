"""Preference data from files to batches: the accepted formats and their checks (one line per bad
file, row or field), tokenization with chat templates and collation. Nothing here runs a model:
packing and the cached reference log-probs, which do, are in :mod:`prefopt.models`."""
