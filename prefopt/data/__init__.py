"""Preference data from files to batches: the accepted formats and their checks (one line per bad
file, row or field), tokenization with chat templates, collation, sequence packing, and the
on-disk cache of precomputed reference log-probs."""
