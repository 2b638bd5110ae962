"""prefopt: one trainer, interchangeable preference-optimization objectives.

The package tree is the architecture, one subpackage per layer, each depending only on the
layers listed before it:

    core/          errors, typed config, batch sources, checkpoint store, the one training loop
    distributed/   placement of models over processes: none / ddp / fsdp2
    models/        loading policy / reference / reward model (LoRA, 4-bit), log-probs
    data/          formats, diagnosis of bad files, tokenize / collate, packing, reference cache
    objectives/    registry + one file per method (pg/: advantages, KL, value)
    rollout/       sampler / decode loop, reward sources, rollout source, evaluation
    testbed/       the built-in worlds with a gold reward
    cli/           prefopt-train (Hydra app, precheck), the run's stages, resume, summary
    leaderboard/   protocol, selection, statistics, rendering
    bench/         benchmarks (``python -m prefopt.bench``) and their results
"""
