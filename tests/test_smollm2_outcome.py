"""The learning outcome on the real checkpoint: GRPO with the exact reward raises SmolLM2-135M-
Instruct's held-out sampled accuracy on smol_arith, with rollouts from the torch engine and from
llama.cpp (the same threshold for both). A few minutes per seed on 2 CPU cores, so it is
marked ``real``: the default ``pytest`` run leaves it out, ``.ci/run`` runs it after the suite and
``tests/cross_cpu.sh`` (``-m outcome``) under each instruction set."""

import importlib.util
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


# The llama.cpp engine samples from its own F16 copy of the weights: its log-probs μ differ from the
# trainer's π_old by rounding, which the truncated importance weight π_old/μ corrects.
ENGINES = {"torch": [], "llamacpp": ["rollout.engine=llamacpp", "algo.rollout_is=token_truncate"]}


@pytest.mark.parametrize("engine", list(ENGINES))
def test_grpo_raises_smollm2_held_out_accuracy(outcome, tmp_path, engine):
    if engine == "llamacpp" and importlib.util.find_spec("llama_cpp") is None:
        pytest.skip('llama.cpp is not installed (pip install -e ".[llamacpp]")')
    gains, evals = [], []
    for seed in (0, 1):
        out = tmp_path / f"s{seed}"
        p = cli(*GRPO, *ENGINES[engine], f"seed={seed}", f"hydra.run.dir={out}", timeout=1200)
        assert p.returncode == 0, p.stderr[-2000:]
        ev = json.load(open(out / "summary.json"))["eval"]
        gains.append(ev["gold_reward"] - ev["gold_reward_ref"])
        evals.append(ev)
    outcome(f"held-out sampled accuracy − the base model's, mean of 2 seeds ({engine} rollouts)", statistics.mean(gains),
            ">", 0.15,
            {"gains": gains, "evals": evals})
