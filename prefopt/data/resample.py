"""Bootstrap resampling of a run's training examples (an ensemble member's own view of the data).

``algo.ensemble_resample=bootstrap``: member i trains on n draws with replacement from its n
training examples, seeded by its own seed, so the members differ by data as well as by
initialisation (``ensemble_resample=seed``: by initialisation and batch order alone).
"""

from __future__ import annotations

import random


def bootstrap(examples: list, seed: int) -> list:
    """A bootstrap resample of the training examples: n draws with replacement from the n examples."""
    if not examples:
        return examples
    rng = random.Random(f"bootstrap-{seed}")  # its own stream: the seed also fixes initialisation and batch order
    return [examples[rng.randrange(len(examples))] for _ in examples]
