"""Held-out evaluation over episodes (env runs): π's and π_ref's numbers come from episodes run by the training's
episode runner, KL(π‖π_ref) sums over the policy's own tokens only, the π_ref cache is keyed by the environment,
and an env run's summary reports the episode solve rate and turns while a single-turn run's block has no env fields.

A random Llama policy (as in tests/test_episode_masks.py) plays a stub environment whose reward is known from the
episode's turns; π_ref is a perturbed copy, so the KL is not zero on any token.
"""

import copy
import json

import pytest
import torch
from episodic import WORDS, episodic_policy

from prefopt.models.load import FrozenReference
from prefopt.rollout import evaluate
from prefopt.rollout.envs.base import EnvConfig, Environment, StepResult
from prefopt.rollout.episode_eval import EpisodeDraws
from prefopt.rollout.episodes import run_episodes
from prefopt.rollout.evaluate import Evaluator, sequence_kl
from prefopt.rollout.sampler import HFSampler, SamplingConfig

PROMPTS = ["bab dod", "fif", "gug hah jej", "kik lol", "mum", "nan pop rer"]
CFG = SamplingConfig(temperature=1.0, max_new_tokens=6, samples_per_prompt=3, prompts_per_batch=64)


class Counted(Environment):
    """0.5 reward and one call per step; asks again once, so an episode scores 0.5 × its turns."""

    name = "counted"

    def reset(self, row):
        return [{"role": "user", "content": row["prompt_text"]}]

    def step(self, messages):
        again = sum(m["role"] == "assistant" for m in messages) < 2
        return StepResult([{"role": "user", "content": messages[0]["content"]}] if again else None, 0.5,
                          {"calls": 1, "note": "not a number"})


@pytest.fixture(scope="module")
def world():
    tok, policy = episodic_policy(WORDS)
    with torch.no_grad():
        ref = copy.deepcopy(policy)
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return tok, policy.eval(), ref


def _evaluator(world, env, **kw):
    tok, policy, ref = world
    ids = [evaluate.chat_prompt_ids(tok, p) for p in PROMPTS]
    sampler = HFSampler(tok.pad_token_id, tok.eos_token_id)
    draws = EpisodeDraws(env, tokenizer=tok, sampler=sampler, prompts_text=PROMPTS, prompts_ids=ids, seed=7) \
        if env is not None else None
    return Evaluator(tokenizer=tok, reference=FrozenReference(ref), prompts_text=PROMPTS, prompts_ids=ids,
                     sampler=sampler, cfg=CFG, seed=7, episodes=draws, **kw)


def test_env_eval_block_is_read_from_episodes_of_pi_and_pi_ref(world):
    tok, policy, ref = world
    res = _evaluator(world, Counted(EnvConfig(max_turns=4, max_episode_tokens=20)), greedy=True)(policy)
    # The gold fields are the episodes' rewards, with no task gold_fn: 0.5 per turn, π's and π_ref's.
    assert res["gold_reward"] == pytest.approx(0.5 * res["env_turns"])
    assert res["gold_reward_ref"] == pytest.approx(0.5 * res["env_turns_ref"])
    assert res["env_info/calls"] == res["env_turns"] and "env_info/note" not in res
    assert 1 <= res["env_turns"] <= 2 and res["gold_reward_greedy"] is not None
    assert res["mean_length"] == pytest.approx(res["env_policy_tokens"])
    # The same episodes as the runner draws on its own, for π and for π_ref.
    rows = [{"row": i, "prompt_text": p} for i, p in enumerate(PROMPTS)]
    env = Counted(EnvConfig(max_turns=4, max_episode_tokens=20))
    sampler = HFSampler(tok.pad_token_id, tok.eos_token_id)
    drawn = []
    for model, key in ((policy, ""), (ref, "_ref")):
        eps = run_episodes(env, rows, sampler=sampler, policy=model, tokenizer=tok, cfg=CFG, seed=7)
        assert res[f"gold_reward{key}"] == pytest.approx(sum(e.reward for e in eps) / len(eps))
        assert res[f"env_turns{key}"] == pytest.approx(sum(e.turns for e in eps) / len(eps))
        drawn.append([e.ids for e in eps])
    assert drawn[0] != drawn[1]  # π's and π_ref's episodes differ: the checks above tell them apart


def test_kl_sums_over_the_policy_tokens_only(world):
    """sequence_kl with the episodes' masks against a direct float64 KL per position, over policy tokens."""
    tok, policy, ref = world
    rows = [{"row": i, "prompt_text": p} for i, p in enumerate(PROMPTS)]
    eps = run_episodes(Counted(EnvConfig(max_turns=4, max_episode_tokens=20)), rows,
                       sampler=HFSampler(tok.pad_token_id, tok.eos_token_id), policy=policy, tokenizer=tok, cfg=CFG, seed=3)
    assert any(not all(e.policy_mask) for e in eps)  # some episodes hold the environment's tokens
    P, C, M = [e.prompt_ids for e in eps], [e.ids for e in eps], [e.policy_mask for e in eps]
    got = sequence_kl(policy, FrozenReference(ref), P, C, tok.pad_token_id, policy_masks=M, batch_size=4)
    every = sequence_kl(policy, FrozenReference(ref), P, C, tok.pad_token_id)
    p64, r64 = copy.deepcopy(policy).double(), copy.deepcopy(ref).double()
    for k, (p, c, m) in enumerate(zip(P, C, M)):
        x = torch.tensor([p + c])
        lp = torch.log_softmax(p64(input_ids=x).logits[0], -1)
        lq = torch.log_softmax(r64(input_ids=x).logits[0], -1)
        per_pos = (lp.exp() * (lp - lq)).sum(-1)  # KL of the next-token distributions at each position
        want = sum(per_pos[len(p) + t - 1].item() for t in range(len(c)) if m[t])
        assert got[k] == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert any(abs(a - b) > 1e-4 for a, b, m in zip(got, every, M) if not all(m))


def test_pi_ref_cache_is_keyed_by_the_environment(world, tmp_path, monkeypatch):
    tok, policy, ref = world
    monkeypatch.setattr(evaluate, "ref_cache_dir", lambda: str(tmp_path))
    single = _evaluator(world, None, ref_key="same")(policy)
    assert not any(k.startswith("env_") for k in single)
    _evaluator(world, Counted(EnvConfig(max_turns=4, max_episode_tokens=20)), ref_key="same")(policy)
    _evaluator(world, Counted(EnvConfig(max_turns=3, max_episode_tokens=20)), ref_key="same")(policy)
    cached = sorted(tmp_path.glob("*.json"))
    assert len(cached) == 3  # single-turn, and one per environment config: none reads another's draws
    assert sum("fields" in json.loads(f.read_text()) and json.loads(f.read_text())["fields"] != {} for f in cached) == 2
    again = _evaluator(world, Counted(EnvConfig(max_turns=4, max_episode_tokens=20)), ref_key="same")(policy)
    assert len(list(tmp_path.glob("*.json"))) == 3 and "env_turns_ref" in again


def test_env_run_summary_reports_the_episode_solve_rate(tmp_path):
    """arith_retry's info marks the solving step, so its per-episode sum is the episode's reward: the summary's
    env_info/solved equals its gold_reward, π's and π_ref's. A single-turn run's block has no env fields."""
    from conftest import compose

    from prefopt.run import train

    common = ["algo=grpo", "data=arith", "trainer.max_steps=1", "algo.prompts_per_step=4", "algo.samples_per_prompt=2",
              "trainer.progress=false", "eval.num_prompts=8", "eval.max_new_tokens=4", "trainer.save_model=false"]
    train(compose([*common, "env=arith_retry"]), str(tmp_path / "env"))
    ev = json.loads((tmp_path / "env" / "summary.json").read_text())["eval"]
    assert 1 <= ev["env_turns"] <= 2 and 1 <= ev["env_turns_ref"] <= 2
    assert ev["env_info/solved"] == pytest.approx(ev["gold_reward"])
    assert ev["env_info/solved_ref"] == pytest.approx(ev["gold_reward_ref"])
    train(compose(common), str(tmp_path / "single"))
    ev = json.loads((tmp_path / "single" / "summary.json").read_text())["eval"]
    assert ev["gold_reward"] is not None and not any(k.startswith("env_") for k in ev)


def test_summary_table_shows_the_episode_rows_for_env_runs_only():
    from rich.console import Console

    from prefopt.run.summary import print_summary

    s = {"algo": "grpo", "task": "arith", "seed": 0, "steps": 1, "wall_time_s": 1.0, "tokens_per_s": 1.0, "peak_mem_mb": 1.0,
         "eval": {"gold_reward": 0.5, "gold_reward_ref": 0.25, "env_turns": 1.5, "env_turns_ref": 1.75,
                  "env_info/tool_call": 0.125, "env_info/tool_call_ref": 0.0}}
    console = Console(record=True, width=100)
    print_summary(s, console)
    text = console.export_text()
    assert "turns per episode" in text and "1.500" in text and "1.750" in text
    assert "tool_call per episode" in text and "0.125" in text
    console = Console(record=True, width=100)
    print_summary({**s, "eval": {"gold_reward": 0.5}}, console)
    assert "per episode" not in console.export_text()
