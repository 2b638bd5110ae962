"""Every online preset trains on the testbed in a short run and raises the held-out gold reward.

reviews: the gold reward as the reward source (reward=auto, the default; or reward=reviews_gold),
and a trained reward model (reward=model) for RLOO and PPO; arith: the exact-match reward. The gold
reward is the evaluation's, on held-out prompts never trained on. Runs are short (seconds to tens of
seconds each on 2 CPU cores): small rollouts, a constant learning rate, no warm-up.
"""

import json
import os

import pytest

# 128 held-out prompts × 2 samples: with 64 × 1 the evaluation's own noise (one policy's measured
# gain spans −0.37 to +0.22 over two evaluations) is the size of the thresholds below.
SHORT = ["trainer.warmup_steps=0", "trainer.lr_schedule=constant", "trainer.log_every_steps=1", "eval.num_prompts=128",
         "eval.samples_per_prompt=2", "eval.max_new_tokens=24", "trainer.save_model=false"]

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
def test_preset_raises_gold_reward_on_reviews(run_cfg, outcome, algo, tmp_path):
    extra = REVIEWS[algo] if any(o.startswith("trainer.lr=") for o in REVIEWS[algo]) else ["trainer.lr=1e-3", *REVIEWS[algo]]
    # The median gain over three training seeds: twelve steps of 8×4 samples at 1e-3 are a noisy
    # estimate from one seed (dapo's seed-0 gain: 0.66 on AVX-512, 0.11 on AVX2), and on some
    # SFT policies one seed in three diverges (dr_grpo: 0.66, 0.55, −6.0 with a testbed built at 1
    # thread); a mean would let that one run decide.
    gains = []
    for seed in (0, 1, 2):
        s, out = run_cfg(f"algo={algo}", "data=reviews", f"seed={seed}", "trainer.max_steps=12", *SHORT, *extra,
                         out=tmp_path / f"s{seed}")
        ev = s["eval"]
        gains.append(ev["gold_reward"] - ev["gold_reward_ref"])
        assert s["gen_time_s"] > 0 and s["train_time_s"] > 0
        rows = _rows(out)
        assert rows[0]["rollout/reward_mean"] is not None
        if algo == "rejection_sampling":
            # The winners score above the batch they were selected from.
            assert all(r["rollout/selected_reward_mean"] > r["rollout/reward_mean"] for r in rows)
        if algo == "dapo":
            assert all(0 < r["rollout/groups_kept_frac"] <= 1 for r in rows)
    outcome("gold reward − reference's, median of 3 seeds", sorted(gains)[1], ">", 0.1, gains)


# arith: π_SFT knows addition but samples the demonstrations' slips (testbed/arith.py), so the
# exact-match reward can sharpen it. Learning rate 1e-4, not reviews' 1e-3: the first Adam steps at
# 1e-3 wreck the tiny policy's addition (rollout exact match 0.45 → 0.02 after one step).
ARITH = {
    "grpo": ["algo.prompts_per_step=16", "algo.samples_per_prompt=8"],
    "dr_grpo": ["algo.prompts_per_step=16", "algo.samples_per_prompt=8"],
    "dapo": ["algo.prompts_per_step=16", "algo.samples_per_prompt=8"],
    "rloo": ["algo.prompts_per_step=16", "algo.samples_per_prompt=4"],
    "ppo": ["algo.prompts_per_step=64", "algo.minibatches_per_rollout=1", "algo.epochs_per_rollout=1"],
    "rejection_sampling": ["algo.prompts_per_step=16", "algo.samples_per_prompt=4"],
}


@pytest.mark.slow
@pytest.mark.parametrize("algo", list(ARITH))
def test_preset_raises_held_out_exact_match_on_arith(run_cfg, outcome, algo):
    s, _ = run_cfg(f"algo={algo}", "data=arith", "reward=arith_exact", "trainer.max_steps=40", "trainer.lr=1e-4",
                     *SHORT, *ARITH[algo], "eval.num_prompts=128", "eval.samples_per_prompt=4", "eval.max_new_tokens=8")
    ev = s["eval"]
    # π_SFT: clearly better than chance, below the demonstrations' 55%.
    assert 0.25 < ev["gold_reward_ref"] < 0.55, ev
    outcome("exact match − reference's", ev["gold_reward"] - ev["gold_reward_ref"], ">", 0.1, ev)


@pytest.fixture(scope="module")
def reviews_reward_model(tmp_path_factory):
    """A Bradley–Terry reward model trained on the reviews pairs with the leaderboard's stage-1
    recipe (the proxy reward model the leaderboard's online rows use); its model/ directory."""
    from conftest import FAST, check_outcome, compose
    from prefopt.leaderboard.suite import load_suite
    from prefopt.run import train as run

    out = tmp_path_factory.mktemp("reward_model")
    s = run(compose([*FAST, "algo=reward", "data=reviews", *load_suite("standard").stage1]), str(out))
    # It must order held-out completions by gold reward, or the tests below prove nothing.
    check_outcome("reviews_reward_model fixture", "held-out accuracy against the gold ordering",
                  s["eval"]["pairwise_accuracy_gold"], ">", 0.70, s["eval"])
    return str(out / "model")


# The reviews settings above, with a trained reward model as the reward source instead of the gold one.
WITH_REWARD_MODEL = {
    # 5e-4 × 20 steps, not reviews' 1e-3 × 12: against a proxy reward model the larger step finds
    # a reward-model exploit on one seed (gold −3.4) with a reward model trained on 2 threads.
    "rloo": ["algo.prompts_per_step=8", "algo.samples_per_prompt=4", "trainer.lr=5e-4", "trainer.max_steps=20"],
    # 24 steps, not reviews' 12: against the reward model 12 PPO steps gained only 0.06-0.13 on two of
    # three seeds (24: median 0.34 on AVX-512, 0.84 on AVX2).
    "ppo": [*REVIEWS["ppo"], "trainer.max_steps=24"],  # its critic starts from the reward model (critic_path unset, reward=model)
}


@pytest.mark.slow
@pytest.mark.parametrize("algo", list(WITH_REWARD_MODEL))
def test_preset_raises_gold_reward_with_a_trained_reward_model(run_cfg, outcome, reviews_reward_model, algo, capsys,
                                                               tmp_path):
    # The median gain over three training seeds. Against a proxy reward model a short RL run on one
    # seed in three sometimes finds an exploit of the reward model, and its gold reward falls (RLOO:
    # −3.4 on AVX-512 and −0.85 on AVX2 at 2 threads, while the other two seeds gained 0.3-0.5): that
    # is over-optimization, which the leaderboard measures, not a broken method. The median asks that
    # most seeds gain; a mean would let one exploit decide the test.
    gains = []
    for seed in (0, 1, 2):
        s, _ = run_cfg(f"algo={algo}", "data=reviews", "reward=model", f"reward.path={reviews_reward_model}",
                       f"seed={seed}", "trainer.max_steps=12", *SHORT, *WITH_REWARD_MODEL[algo], out=tmp_path / f"s{seed}")
        printed = capsys.readouterr().out
        assert "reward: model = " in printed
        if algo == "ppo":
            assert f"value: separate critic from {reviews_reward_model}" in printed
        ev = s["eval"]
        assert ev["proxy_reward"] is not None  # the evaluation scores with the reward model too
        gains.append(ev["gold_reward"] - ev["gold_reward_ref"])
    outcome("gold reward − reference's, median of 3 seeds", sorted(gains)[1], ">", 0.1, gains)


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
