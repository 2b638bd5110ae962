"""The trainer core, which knows no method by name and imports nothing above it: user errors, the
typed config sections, atomic file writes, batch sources (offline datasets), what the trainer needs
from a placement (a Protocol; the real one is prefopt.distributed's), the checkpoint store (atomic,
verified, resumable) and the one training loop that asks an objective for a loss and does everything else."""
