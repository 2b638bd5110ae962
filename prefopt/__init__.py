"""prefopt: one trainer, interchangeable preference-optimization objectives.

From Python, one training run (the same overrides as ``prefopt-train``):

    import prefopt
    result = prefopt.Run(["algo=dpo", "trainer.max_steps=20"], out_dir="runs/dpo").train()

The package tree is the architecture, one subpackage per layer, each depending only on the
layers listed before it (leaderboard/ and bench/ not on each other). The order is an import-linter
contract in pyproject.toml (``lint-imports``, run by tests/test_layers.py):

    core/          errors, typed config, atomic files, batch sources, checkpoint store, the one training loop
    distributed/   placement of models over processes: none / ddp / fsdp2
    data/          formats, diagnosis of bad files, tokenize / collate, bootstrap resampling
    models/        loading policy / reference / reward model (LoRA, 4-bit, GGUF), log-probs, packing,
                   reference cache
    rollout/       sampler / decode loop, reward sources, rollout source, evaluation
    objectives/    registry + one file per method (pg/: advantages, KL, value)
    testbed/       the built-in worlds with a gold reward
    label/         AI feedback: judges and the preference file they write
    run/           the run API (Run, compose): one training run in stages, resume, signals, summary
    cli/           the commands: prefopt-train (Hydra app, precheck), prefopt-label, best-of-n
    leaderboard/   protocol, selection, statistics, rendering
    bench/         benchmarks (``python -m prefopt.bench``) and their results
"""

__all__ = ["Run", "RunResult", "compose"]


def __getattr__(name: str):
    # PEP 562: `import prefopt` stays light (no torch, no Hydra) until the run API is used.
    if name in __all__:
        import prefopt.run

        return getattr(prefopt.run, name)
    raise AttributeError(f"module 'prefopt' has no attribute {name!r}")
