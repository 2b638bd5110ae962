"""The trainer core, which knows no method by name: user errors, the typed config sections, batch
sources (offline datasets), the checkpoint store (atomic, verified, resumable) and the one training
loop that asks an objective for a loss and does everything else."""
