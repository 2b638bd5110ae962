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

from prefopt.data.tokenize import pad_batch
from prefopt.models.logprobs import token_stats
from prefopt.rollout.envs.base import EnvConfig, Environment, StepResult
from prefopt.rollout.episodes import mask_policy_tokens, run_episodes
from prefopt.rollout.sampler import HFSampler, SamplingConfig

WORDS = ["bab", "dod", "fif", "gug", "hah", "jej", "kik", "lol", "mum", "nan", "pop", "rer", "sis", "tut", "vov"]


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
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefopt.testbed.tokenizer import build_tokenizer

    tok = build_tokenizer(WORDS)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).float()
    with torch.no_grad():
        # Every embedding shares a direction that the EOS row of the head reads: turns end after a few
        # tokens (p(EOS) ≈ 0.1–0.4), so episodes have several turns.
        u = torch.randn(cfg.hidden_size)
        model.model.embed_tokens.weight.add_(u)
        model.lm_head.weight[tok.eos_token_id] = 0.08 * u
    return tok, model


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

