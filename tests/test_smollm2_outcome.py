"""The learning outcome on the real checkpoint: GRPO with the exact reward raises SmolLM2-135M-
Instruct's held-out sampled accuracy on smol_arith. About 4 minutes per seed on 2 CPU cores, so it is
marked ``real``: the default ``pytest`` run leaves it out, ``.ci/run`` runs it after the suite and
``tests/cross_cpu.sh`` (``-m outcome``) under each instruction set."""

import json
import statistics

import pytest
from short_runs import cli

pytestmark = [pytest.mark.slow, pytest.mark.real]

# 12 optimizer steps of 4 prompts x 8 samples, LoRA r=16 at a constant 5e-4, evaluated on 52 sampled
# answers to the 26 test problems.
GRPO = ["model=smollm2", "data=smol_arith", "algo=grpo", "trainer.max_steps=12", "algo.prompts_per_step=4",
        "algo.samples_per_prompt=8", "trainer.warmup_steps=0", "trainer.lr_schedule=constant", "trainer.lr=5e-4",
        "eval.num_prompts=52", "trainer.progress=false"]


def test_grpo_raises_smollm2_held_out_accuracy(outcome, tmp_path):
    gains, evals = [], []
    for seed in (0, 1):
        out = tmp_path / f"s{seed}"
        p = cli(*GRPO, f"seed={seed}", f"hydra.run.dir={out}", timeout=1200)
        assert p.returncode == 0, p.stderr[-2000:]
        ev = json.load(open(out / "summary.json"))["eval"]
        gains.append(ev["gold_reward"] - ev["gold_reward_ref"])
        evals.append(ev)
    outcome("held-out sampled accuracy − the base model's, mean of 2 seeds", statistics.mean(gains), ">", 0.15,
            {"gains": gains, "evals": evals})
