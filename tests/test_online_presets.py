"""Every online preset trains on the testbed in a short run and raises the gold reward.

reviews: the gold reward as the reward source (reward=auto, the default; or reward=reviews_gold);
arith: the exact-match reward. Runs are short (tens of seconds each on 2 CPU cores): small
rollouts, a higher learning rate than the default, no warm-up.
"""

import json
import os

import pytest

SHORT = ["trainer.warmup_steps=0", "trainer.lr_schedule=constant", "trainer.log_every_steps=1", "eval.num_prompts=64",
         "eval.max_new_tokens=24", "trainer.save_model=false"]

REVIEWS = {
    "grpo": ["algo.prompts_per_step=8", "algo.samples_per_prompt=4"],
    "dr_grpo": ["algo.prompts_per_step=8", "algo.samples_per_prompt=4"],
    "dapo": ["algo.prompts_per_step=8", "algo.samples_per_prompt=4"],
    "rloo": ["algo.prompts_per_step=8", "algo.samples_per_prompt=4", "reward=reviews_gold"],
    "ppo": ["algo.prompts_per_step=32", "algo.minibatches_per_rollout=1", "algo.epochs_per_rollout=1", "trainer.lr=5e-4"],
    "rejection_sampling": ["algo.prompts_per_step=8", "algo.samples_per_prompt=4"],
}


def _rows(out):
    return [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]


@pytest.mark.slow
@pytest.mark.parametrize("algo", list(REVIEWS))
def test_preset_raises_gold_reward_on_reviews(run_cfg, algo):
    extra = REVIEWS[algo] if any(o.startswith("trainer.lr=") for o in REVIEWS[algo]) else ["trainer.lr=1e-3", *REVIEWS[algo]]
    s, out = run_cfg(f"algo={algo}", "data=reviews", "trainer.max_steps=12", *SHORT, *extra)
    ev = s["eval"]
    assert ev["gold_reward"] > ev["gold_reward_ref"] + 0.1, ev
    assert s["gen_time_s"] > 0 and s["train_time_s"] > 0
    rows = _rows(out)
    assert rows[0]["rollout/reward_mean"] is not None
    if algo == "rejection_sampling":
        # The winners score above the batch they were selected from.
        assert all(r["rollout/selected_reward_mean"] > r["rollout/reward_mean"] for r in rows)
    if algo == "dapo":
        assert all(0 < r["rollout/groups_kept_frac"] <= 1 for r in rows)


@pytest.mark.slow
def test_grpo_raises_exact_match_on_arith(run_cfg):
    # The tiny SFT policy gets ~5% of sums right and cannot learn addition in a test's budget, so
    # GRPO trains on two prompts (32 samples each) and must raise its exact-match (gold) reward there.
    s, out = run_cfg("algo=grpo", "data=arith", "reward=arith_exact", "data.num_rows=2", "trainer.max_steps=15",
                     "trainer.lr=3e-4", "algo.prompts_per_step=2", "algo.samples_per_prompt=32", *SHORT,
                     "eval.num_prompts=16", "eval.max_new_tokens=8")
    rows = _rows(out)
    first = sum(r["rollout/reward_mean"] for r in rows[:4]) / 4
    last = sum(r["rollout/reward_mean"] for r in rows[-4:]) / 4
    assert last > first + 0.1, (first, last)


def test_ppo_with_a_value_head_under_lora(run_cfg, capsys):
    s, out = run_cfg("algo=ppo", "algo.critic=shared", "data=reviews", "trainer.max_steps=2", "model.lora.r=4",
                     "algo.prompts_per_step=8", *SHORT, "trainer.save_model=true")
    printed = capsys.readouterr().out
    assert "reference: AdapterDisabledReference" in printed and "value: value head on the policy" in printed
    assert s["steps"] == 2 and "value_loss" in _rows(out)[-1]
    # model/ is the plain LoRA adapter: no value weights in it.
    from safetensors.torch import load_file

    weights = load_file(os.path.join(out, "model", "adapter_model.safetensors"))
    assert weights and not any("prefopt_value" in k for k in weights)
