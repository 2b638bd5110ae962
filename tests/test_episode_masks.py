"""Multi-turn episodes: the policy-token mask and the log-probs against independent references.

A random Llama policy plays a scripted environment that answers with random words for a random number
of turns. The reference rebuilds each trajectory from what the environment saw and said (its replies
rendered by hand in the testbed template's format, not by the runner's template diff), and recomputes
every policy token's log-prob in float64 on the unpadded sequence. The runner's mask, the sampler's
log-probs and the fused kernel over the padded batch of whole episodes must all agree with it,
including episodes cut mid-turn at the token limit.
"""

import random

import pytest
import torch
from episodic import WORDS, episodic_policy

from prefopt.data.tokenize import pad_batch
from prefopt.models.logprobs import token_stats
from prefopt.rollout.envs.base import EnvConfig, Environment, StepResult
from prefopt.rollout.episodes import mask_policy_tokens, run_episodes
from prefopt.rollout.sampler import HFSampler, SamplingConfig



class Scripted(Environment):
    """Replies with 1–3 random words, chosen from the conversation's length and a per-episode draw;
    ends the episode at a random turn. Logs every call for the reference."""

    name = "scripted"

    def __init__(self, cfg, seed=0):
        super().__init__(cfg)
        self.rng = random.Random(seed)
        self.log = {}  # episode key (the prompt) → [(assistant content seen, reply or None)]

    def reset(self, row):
        return [{"role": "user", "content": row["prompt_text"]}]

    def step(self, messages):
        key = messages[0]["content"]
        reply = None
        if self.rng.random() < 0.8:
            reply = " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(1, 3)))
        self.log.setdefault(key, []).append((messages[-1]["content"], reply))
        return StepResult(None if reply is None else [{"role": "user", "content": reply}], 0.5)


@pytest.fixture(scope="module")
def world():
    return episodic_policy()


def _rows(n, seed):
    rng = random.Random(seed)
    return [{"row": i, "prompt_text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5)))} for i in range(n)]


def _ref_logps(model64, ids, positions, temperature):
    x = torch.tensor([ids])
    logits = model64(input_ids=x, use_cache=False).logits[0].double() / temperature
    lp = torch.log_softmax(logits, -1)
    return torch.stack([lp[t - 1, ids[t]] for t in positions])


@pytest.mark.parametrize("seed,max_tokens", [(0, 40), (1, 9), (2, 17)])
def test_mask_and_logprobs_match_float64_reference(world, seed, max_tokens):
    tok, model = world
    env = Scripted(EnvConfig(name="scripted", max_turns=4, max_episode_tokens=max_tokens), seed=seed)
    rows = _rows(12, seed)
    # Distinct prompts: the reference finds each episode's log by its prompt.
    rows = [r for i, r in enumerate(rows) if r["prompt_text"] not in [x["prompt_text"] for x in rows[:i]]]
    cfg = SamplingConfig(temperature=0.9, max_new_tokens=6, samples_per_prompt=1)
    eps = run_episodes(env, rows, sampler=HFSampler(tok.pad_token_id, tok.eos_token_id), policy=model,
                       tokenizer=tok, cfg=cfg, seed=seed)
    eos = tok.eos_token_id
    model64 = type(model)(model.config).double()
    model64.load_state_dict(model.state_dict())
    for row, ep in zip(rows, eps):
        log = env.log[row["prompt_text"]]
        assert len(ep.ids) == len(ep.policy_mask) <= max_tokens
        assert ep.turns == len(log) <= 4
        assert ep.prompt_ids == tok(f"<|user|> {row['prompt_text']} <|assistant|>", add_special_tokens=False)["input_ids"]
        # Rebuild: policy run k, then the environment's reply k rendered as the testbed template does.
        t, expect_mask = 0, []
        for k, (content, reply) in enumerate(log):
            start = t
            while t < len(ep.ids) and ep.policy_mask[t]:
                t += 1
            run = ep.ids[start:t]
            assert run and tok.decode(run, skip_special_tokens=True) == content
            assert eos not in run[:-1]
            expect_mask += [True] * len(run)
            last = k == len(log) - 1
            if not last:
                assert run[-1] == eos
                env_ids = tok(f" <|user|> {reply} <|assistant|>", add_special_tokens=False)["input_ids"]
                assert ep.ids[t : t + len(env_ids)] == env_ids
                expect_mask += [False] * len(env_ids)
                t += len(env_ids)
        assert t == len(ep.ids) and ep.policy_mask == expect_mask
        if ep.stop == "max_episode_tokens" and ep.ids[-1] != eos:
            assert len(ep.ids) == max_tokens  # cut mid-turn exactly at the limit
        # Log-probs: sampler (float32) and the fused kernel over the padded batch, against float64.
        pos = [len(ep.prompt_ids) + i for i, m in enumerate(ep.policy_mask) if m]
        ref = _ref_logps(model64, ep.prompt_ids + ep.ids, pos, cfg.temperature)
        assert len(ep.logprobs) == len(pos)
        torch.testing.assert_close(torch.tensor(ep.logprobs, dtype=torch.float64), ref, atol=2e-5, rtol=0)
        assert ep.reward == pytest.approx(0.5 * ep.turns)
    b = pad_batch([e.prompt_ids for e in eps], [e.ids for e in eps], tok.pad_token_id)
    lm = mask_policy_tokens(b["loss_mask"], [e.policy_mask for e in eps])
    assert int(lm.sum()) == sum(e.policy_tokens for e in eps)
    assert (b["attention_mask"] == 0).any()  # the batch is padded
    st = token_stats(model, b["input_ids"], b["attention_mask"], lm, temperature=cfg.temperature)
    for i, ep in enumerate(eps):
        pos = [len(ep.prompt_ids) + j for j, m in enumerate(ep.policy_mask) if m]
        ref = _ref_logps(model64, ep.prompt_ids + ep.ids, pos, cfg.temperature)
        torch.testing.assert_close(st.logps[i, pos].double(), ref, atol=2e-5, rtol=0)
        assert st.logps[i][~lm[i]].abs().sum() == 0  # nothing off the policy's tokens
    assert max(e.turns for e in eps) >= 2  # multi-turn episodes
    if max_tokens == 9:
        assert any(e.stop == "max_episode_tokens" and e.ids[-1] != eos for e in eps)  # one ends mid-turn



class Endless(Environment):
    """Never ends an episode: always one more word."""

    name = "endless"

    def reset(self, row):
        return [{"role": "user", "content": row["prompt_text"]}]

    def step(self, messages):
        return StepResult([{"role": "user", "content": "bab"}], 1.0)


@pytest.mark.parametrize("max_turns,max_tokens", [(3, 200), (1, 200), (6, 11), (4, 1)])
def test_turn_and_token_limits(world, max_turns, max_tokens):
    tok, model = world
    env = Endless(EnvConfig(name="endless", max_turns=max_turns, max_episode_tokens=max_tokens))
    eps = run_episodes(env, _rows(8, 3), sampler=HFSampler(tok.pad_token_id, tok.eos_token_id), policy=model,
                       tokenizer=tok, cfg=SamplingConfig(temperature=1.0, max_new_tokens=24, samples_per_prompt=2),
                       seed=3)
    assert len(eps) == 16
    for ep in eps:
        assert ep.stop in ("max_turns", "max_episode_tokens", "no_eos") and not ep.done
        assert 1 <= ep.turns <= max_turns and len(ep.ids) <= max_tokens
        assert ep.reward == ep.turns  # one step, one reward, per turn
        if ep.stop == "max_turns":
            assert ep.turns == max_turns and ep.ids[-1] == tok.eos_token_id
        if ep.stop == "no_eos":
            assert len(ep.ids) < max_tokens and ep.ids[-1] != tok.eos_token_id
    stops = {ep.stop for ep in eps}
    if max_tokens == 200:
        assert "max_turns" in stops
    else:
        assert "max_episode_tokens" in stops
    if max_tokens == 1:
        assert all(len(ep.ids) == 1 and ep.turns == 1 for ep in eps)


def test_rollout_source_trains_on_policy_tokens_only(world):
    """Through the online pipeline: loss_mask, the sampler's and the recomputed π_old log-probs, and
    the advantages live on the policy's tokens only; the episode reward is the score."""
    from prefopt.objectives.policy_gradient import PGConfig
    from prefopt.objectives.registry import get_objective
    from prefopt.rollout.source import RolloutSource

    tok, model = world
    env = Scripted(EnvConfig(name="scripted", max_turns=3, max_episode_tokens=20), seed=5)
    ex = [{"row": r["row"], "prompt_text": r["prompt_text"], "prompt_ids": [0]} for r in _rows(8, 5)]
    obj = get_objective("grpo")(PGConfig(prompts_per_step=4, samples_per_prompt=2, epochs_per_rollout=2))
    src = RolloutSource(examples=ex, objective=obj, policy=model, reward=None, tokenizer=tok, max_new_tokens=6, seed=0,
                        sampler=HFSampler(tok.pad_token_id, tok.eos_token_id), env=env)
    assert src.norm_tokens == 18  # min(3 turns × 6, 20)
    roll = src.make_rollout(0)
    lm = roll["loss_mask"]
    assert roll["input_ids"].shape[0] == 8 and not src.old_is_current
    n_env = src.last_metrics["rollout/env_tokens"] * 8
    n_policy = src.last_metrics["rollout/env_policy_tokens"] * 8
    assert n_env > 0 and int(lm.sum()) == round(n_policy)
    n_prompt = sum(len(tok(f"<|user|> {t} <|assistant|>", add_special_tokens=False)["input_ids"])
                   for t in roll["prompt_text"])
    assert int((roll["attention_mask"].bool() & ~lm).sum()) == n_prompt + round(n_env)  # context: prompt + env
    m = src.last_metrics
    assert m["rollout/reward_mean"] == pytest.approx(0.5 * m["rollout/env_turns"])  # the episodes' rewards
    assert (roll["old_logps"][~lm] == 0).all() and (roll["old_logps"][lm] < 0).all()
    assert (roll["advantages"][~lm] == 0).all()
    assert src.logp_abs_diff is not None and src.logp_abs_diff < 1e-4
