"""The online pipeline's parts: rollout engine, reward sources, batch plan, rejection sampling."""

import pytest
import torch

from conftest import TINY, tiny_model
from prefopt.models.logprobs import token_stats
from prefopt.data.tokenize import pad_batch as build_sequences
from prefopt.rollout.source import RolloutFields, plan_batches
from prefopt.rollout.rewards import RewardConfig, RewardTerm, build_reward
from prefopt.rollout.sampler import HFSampler, SamplingConfig

EOS, PAD = 2, 0


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_recomputed_logprobs_equal_the_samplers(temperature):
    torch.manual_seed(0)
    model = tiny_model(seed=3)
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    cfg = SamplingConfig(temperature=temperature, max_new_tokens=6, samples_per_prompt=3, prompts_per_batch=4)
    s = HFSampler(PAD, EOS).sample(model, prompts, cfg, seed=1, return_logprobs=True)
    assert len(s.completions) == 9 and len(s.finished) == 9
    for c, f in zip(s.completions, s.finished):
        assert (c[-1] == EOS) == f and EOS not in c[:-1] and 1 <= len(c) <= 6
    p_ids = [p for p in prompts for _ in range(3)]
    b = build_sequences(p_ids, s.completions, PAD)
    st = token_stats(model, b["input_ids"], b["attention_mask"], b["loss_mask"], temperature=temperature)
    for i, lp in enumerate(s.logprobs):
        got = st.logps[i][st.mask[i]]
        torch.testing.assert_close(got, torch.tensor(lp), rtol=1e-4, atol=1e-4)


def test_sampling_is_seeded_and_keeps_the_callers_rng():
    model = tiny_model(seed=3)
    cfg = SamplingConfig(max_new_tokens=5, samples_per_prompt=2)
    torch.manual_seed(123)
    a = HFSampler(PAD, EOS).sample(model, [[5, 6]], cfg, seed=7).completions
    after = torch.rand(1)
    torch.manual_seed(123)
    b = HFSampler(PAD, EOS).sample(model, [[5, 6]], cfg, seed=7).completions
    assert a == b and torch.equal(after, torch.rand(1))


# ---- reward sources ---------------------------------------------------------------------------


def test_function_reward_penalty_and_clip():
    cfg = RewardConfig(kind="function", function="prefopt.testbed.rewards:arith_exact_match", missing_eos_penalty=0.5,
                       clip=0.8)
    r = build_reward(cfg)
    out = r(["1+2=", "1+2=", "3+4="], ["3", "4", "7"], finished=torch.tensor([True, True, False]))
    torch.testing.assert_close(out, torch.tensor([0.8, 0.0, 0.5]))


def test_weighted_sum_of_sources():
    cfg = RewardConfig(kind="sum", terms=[RewardTerm(function="prefopt.testbed.rewards:arith_exact_match", weight=2.0),
                                          RewardTerm(function="prefopt.testbed.rewards:arith_exact_match", weight=-0.5)])
    torch.testing.assert_close(build_reward(cfg)(["1+2="], ["3"]), torch.tensor([1.5]))


def test_reward_model_source_scores_like_the_classifier(tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from prefopt.testbed.world import load_tokenizer

    tok = load_tokenizer()
    arch = dict(TINY)
    config = AutoConfig.for_model(arch.pop("model_type"), **arch, vocab_size=len(tok), num_labels=1,
                                  pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_config(config)
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    src = build_reward(RewardConfig(kind="model", path=str(tmp_path / "rm")), tokenizer=tok)
    p_ids = [[5, 6, 7], [8, 9]]
    c_ids = [[10, tok.eos_token_id], [11, 12, 13, tok.eos_token_id]]
    got = src(["a", "b"], ["x", "y"], prompt_ids=p_ids, completion_ids=c_ids)
    with torch.no_grad():
        want = [float(rm(input_ids=torch.tensor([p + c])).logits[0, 0]) for p, c in zip(p_ids, c_ids)]
    torch.testing.assert_close(got, torch.tensor(want), rtol=1e-4, atol=1e-5)
    # Text only (evaluation's proxy reward): re-tokenized through the chat template.
    assert src(["good movie"], ["it was great ."]).shape == (1,)


# ---- batch plan -------------------------------------------------------------------------------


def test_batch_plan_derived_numbers():
    c = RolloutFields(prompts_per_step=16, samples_per_prompt=8, sequences_per_device=32, minibatches_per_rollout=2,
                      epochs_per_rollout=3)
    p = plan_batches(c, world_size=2)
    assert (p.sequences_per_rollout, p.sequences_per_step, p.sequences_per_step_per_process) == (128, 64, 32)
    assert (p.micro_batches_per_step, p.steps_per_rollout) == (1, 6)
    assert "128 sequences/rollout" in p.describe(c, 2)


# ---- rejection sampling -----------------------------------------------------------------------


def test_rejection_sampling_keeps_the_best_of_each_group():
    from prefopt.objectives.rejection_sampling import RejectionSampling

    torch.manual_seed(0)
    K, G = 4, 6
    scores = torch.randn(G * K)
    roll = build_sequences([[5, 6]] * (G * K), [[7, EOS]] * (G * K), PAD)
    roll.update(scores=scores, group_size=K, finished=torch.ones(G * K, dtype=torch.bool),
                prompt_text=["p"] * (G * K), completion_text=[str(i) for i in range(G * K)])
    obj = RejectionSampling(RejectionSampling.Config(samples_per_prompt=K, keep_per_prompt=1))
    out, m = obj.prepare(roll)
    assert out["scores"].shape == (G,)
    torch.testing.assert_close(out["scores"], scores.view(G, K).max(-1).values)
    assert out["completion_text"] == [str(g * K + int(scores.view(G, K)[g].argmax())) for g in range(G)]
    assert m["rollout/selected_reward_mean"] > float(scores.mean())


def test_best_of_n_reports_gold_and_analytic_kl():
    from prefopt.rollout.evaluate import chat_prompt_ids
    from prefopt.objectives.rejection_sampling import best_of_n, best_of_n_kl
    from prefopt.testbed.rewards import arith_exact_match
    from prefopt.testbed.world import load_tokenizer

    tok = load_tokenizer()
    model = tiny_model(seed=0, vocab=len(tok))
    prompts = ["12+30=", "7+5="]
    reward = build_reward(RewardConfig(kind="function", function="prefopt.testbed.rewards:arith_exact_match"))
    res = best_of_n(model, tok, prompts, [chat_prompt_ids(tok, p) for p in prompts], reward, ns=(1, 4),
                    gold_fn=arith_exact_match, max_new_tokens=4)
    assert set(res) == {1, 4} and res[1]["kl_analytic"] == 0.0
    assert res[4]["kl_analytic"] == pytest.approx(best_of_n_kl(4))
    assert res[4]["proxy_reward"] >= res[1]["proxy_reward"]


# ---- π_old == π_θ with one optimizer step per rollout ------------------------------------------


class _LengthReward:
    def __call__(self, prompts, completions, *, finished=None, with_terms=False, **_):
        s = torch.tensor([float(len(c.split())) for c in completions])
        return (s, {}) if with_terms else s


@pytest.mark.parametrize("algo,kw", [("grpo", {}), ("rloo", {}), ("grpo", {"ratio_level": "sequence"})])
def test_skipped_old_pass_gives_the_same_loss_and_gradient(algo, kw):
    """One step per rollout: sg[log π_θ] as log π_old (no π_old pass) and the sampler's log-probs
    for prepare give the loss, gradient and metrics of the recomputed π_old."""
    import copy

    from prefopt.models.logprobs import Scorer
    from prefopt.models.load import FrozenReference
    from prefopt.rollout.source import RolloutSource
    from prefopt.objectives.registry import get_objective
    from prefopt.testbed.tokenizer import build_tokenizer

    words = ["the", "movie", "was", "a", "plot", "actors", "film", "story"]
    tok = build_tokenizer(words)
    model = tiny_model(seed=5, vocab=len(tok))
    ref = FrozenReference(copy.deepcopy(model))
    with torch.no_grad():  # the policy moves away from the reference, so KL terms are non-zero
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    exs = [{"row": i, "prompt_text": " ".join(words[i % 8 : i % 8 + 3]),
            "prompt_ids": tok(" ".join(words[i % 8 : i % 8 + 3]), add_special_tokens=False)["input_ids"]} for i in range(8)]
    cls = get_objective(algo)
    results = []
    for recompute in (True, False):
        obj = cls(cls.Config(prompts_per_step=4, samples_per_prompt=3, max_new_tokens=8, kl_coef=0.1, **kw))
        src = RolloutSource(examples=exs, objective=obj, policy=model, reward=_LengthReward(),
                            sampler=HFSampler(tok.pad_token_id, tok.eos_token_id), tokenizer=tok, max_new_tokens=8,
                            seed=0, reference=ref)
        assert src.old_is_current
        src.old_is_current = not recompute
        batches = src.step_batches(0)
        model.zero_grad()
        loss, metrics = 0.0, {}
        for b in batches:
            l, m = obj.loss(b, Scorer(model, ref))
            l.backward()
            loss += float(l.detach())
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results.append((loss, grads, src.last_metrics, m))
    (l1, g1, rm1, m1), (l2, g2, rm2, m2) = results
    assert abs(l1 - l2) < 1e-5 * max(1.0, abs(l1))
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)
    assert "rollout/kl_ref" in rm1 or algo == "grpo"
    for k in rm1.keys() - {"rollout/gen_time_s"}:
        assert abs(rm1[k] - rm2[k]) < 1e-4 * max(1.0, abs(rm1[k])), k
    assert float(m2["ratio"]) == pytest.approx(float(m1["ratio"]), rel=1e-5)


def test_decode_loop_draws_follow_the_distribution():
    """The inverse-CDF draw: frequencies match p (chi-square), zero-probability tokens never appear."""
    from prefopt.rollout.sampler import _draw

    p = torch.tensor([[0.1, 0.0, 0.6, 0.3, 0.0]]).repeat(40_000, 1)
    counts = torch.bincount(_draw(p, torch.Generator().manual_seed(0)), minlength=5).double()
    assert counts[1] == 0 and counts[4] == 0
    expected = 40_000 * p[0].double()
    nz = expected > 0
    chi2 = float(((counts[nz] - expected[nz]) ** 2 / expected[nz]).sum())
    assert chi2 < 13.8  # χ²(2 dof) at p = 0.001


# ---- resume: the objective's state (adaptive β, moving baseline) is part of the checkpoint ------

# GRPO with an adaptive β that moves fast (kl_horizon small) and a moving-average baseline as its
# advantage, so both pieces of objective state change every rollout and shape the loss.
ADAPTIVE = ["algo=grpo", "data=reviews", "algo.kl_target=0.5", "algo.kl_horizon=20", "algo.advantage=baseline",
            "algo.prompts_per_step=4", "algo.samples_per_prompt=2", "algo.max_new_tokens=12", "trainer.lr=1e-3",
            "trainer.warmup_steps=0", "trainer.lr_schedule=constant", "trainer.log_every_steps=1",
            "trainer.eval_at_end=false"]


def _interrupted(run_cfg, tmp_path, steps, save_every, extra=()):
    """A full run, and a run stopped after its first checkpoint then resumed; their metrics rows."""
    import json
    import shutil

    full = tmp_path / "full"
    run_cfg(*ADAPTIVE, *extra, f"trainer.max_steps={steps}", f"trainer.save_every_steps={save_every}", out=full)
    part = tmp_path / "part"
    run_cfg(*ADAPTIVE, *extra, f"trainer.max_steps={steps}", f"trainer.save_every_steps={save_every}", out=part)
    # A crash after the first checkpoint: the later checkpoints and the finished outputs are gone.
    ckpts = sorted((part / "checkpoints").iterdir())
    for d in ckpts[1:]:
        shutil.rmtree(d)
    shutil.rmtree(part / "model")
    (part / "summary.json").unlink()
    run_cfg(*ADAPTIVE, *extra, f"trainer.max_steps={steps}", f"trainer.save_every_steps={save_every}",
            "trainer.resume=auto", out=part)

    def rows(d):
        return [{k: v for k, v in json.loads(l).items() if "time" not in k and "per_s" not in k}
                for l in open(d / "metrics.jsonl")]

    return full, part, rows(full), rows(part)


def _objective_state(run_dir):
    ckpt = sorted((run_dir / "checkpoints").iterdir())[-1]
    return torch.load(ckpt / "optim.pt", weights_only=False)["parts"]["objective"]


def test_resume_on_a_rollout_boundary_restores_kl_coef_and_baseline(run_cfg, tmp_path):
    full, part, rows_full, rows_part = _interrupted(run_cfg, tmp_path, steps=4, save_every=2)
    betas = [r["rollout/kl_coef"] for r in rows_full]
    assert len(set(betas)) == 4, betas  # β moved every rollout: restarting it from 0.04 would show
    assert rows_part == rows_full
    assert _objective_state(part) == _objective_state(full)
    from safetensors.torch import load_file

    wa, wb = load_file(full / "model" / "model.safetensors"), load_file(part / "model" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_mid_rollout_applies_the_rollouts_update_once(run_cfg, tmp_path):
    # Two optimizer steps per rollout, a checkpoint after step 3: mid-rollout 1. Resume regenerates
    # rollout 1 (from the partly updated policy) and must prepare it with the β it had the first
    # time, not with β already updated by it.
    full, part, rows_full, rows_part = _interrupted(run_cfg, tmp_path, steps=6, save_every=3,
                                                    extra=["algo.minibatches_per_rollout=2"])
    by_step = lambda rows: {r["step"]: r for r in rows}  # noqa: E731
    f, p = by_step(rows_full), by_step(rows_part)
    assert rows_part[:3] == rows_full[:3]
    assert "rollout/kl_coef" in p[4]  # the regenerated rollout 1
    assert f[3]["rollout/kl_coef"] != f[5]["rollout/kl_coef"]  # β_1 ≠ β_2: the check can tell
    assert p[4]["rollout/kl_coef"] == f[3]["rollout/kl_coef"]
