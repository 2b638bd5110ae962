"""The best-of-n baseline: n samples from π_SFT, keep the one the proxy reward model scores highest.

KL(π_best-of-n ‖ π_SFT) = log n − (n−1)/n (Stiennon et al. 2020, appendix; Hilton & Gao 2022), so the
baseline sits on the reward–KL plot without any training. From N = ``samples`` completions per
held-out prompt, the expected value of any statistic f of the pick among n is estimated without
bias over all n-subsets (Nakano et al. 2021, appendix): sort the N samples by the picking score;
the i-th lowest is the maximum of a uniformly drawn n-subset with probability C(i−1, n−1) / C(N, n):

    E[f(best of n)] ≈ Σ_i C(i−1, n−1) / C(N, n) · f(y_(i))

Computed on the validation and on the test prompts: n is chosen on validation, reported on test.
Reported per n: gold reward of the proxy's pick, proxy reward of the proxy's pick, gold reward of
the gold reward's own pick (the oracle: what a perfect reward model would get), and for each of
the two picks its length, repetition, empirical KL and win rate against an independent π_SFT sample.
"""

from __future__ import annotations

import math

import torch

from prefopt.leaderboard.store import BEST_OF_N


def best_of_n_kl(n: int) -> float:
    return math.log(n) - (n - 1) / n


def pick_weights(N: int, n: int) -> torch.Tensor:
    """w[i] = P(the i-th lowest of N is the max of a random n-subset), i = 0..N−1."""
    return torch.tensor([math.comb(i, n - 1) / math.comb(N, n) for i in range(N)], dtype=torch.float64)


def expected_of_pick(score: torch.Tensor, value: torch.Tensor, n: int) -> torch.Tensor:
    """[P] expected ``value`` of the best-by-``score`` among n of the N samples of each prompt ([P, N])."""
    N = score.shape[1]
    order = torch.sort(score.double(), dim=1, stable=True).indices
    return (value.double().gather(1, order) * pick_weights(N, n)).sum(1)


def empirical_kl(score: torch.Tensor, n: int) -> float:
    """Mean over prompts of KL(pick-of-n ‖ uniform) on the N samples of each prompt ([P, N] scores):
    Σ_i w_i log(N w_i), with the pick's probability shared equally within a group of tied scores (a
    tie is broken uniformly at random). Tends to log n − (n−1)/n as N grows with n fixed; smaller
    when π_SFT repeats completions (ties), larger when N is not ≫ n (at n = N it is log N)."""
    P, N = score.shape
    w = pick_weights(N, n)
    total = 0.0
    for row in torch.sort(score.double(), dim=1, stable=True).values:
        ww = w.clone()
        i = 0
        while i < N:
            j = i
            while j + 1 < N and row[j + 1] == row[i]:
                j += 1
            ww[i : j + 1] = ww[i : j + 1].mean()
            i = j + 1
        pos = ww > 0
        total += float((ww[pos] * torch.log(N * ww[pos])).sum())
    return total / max(P, 1)


def run_best_of_n(spec: dict, out_dir: str, console=None) -> dict:
    """The result's eval block per n, plus the references (n = 1) for calibration."""
    import time

    from prefopt.rollout.evaluate import chat_prompt_ids, repetition_rate
    from prefopt.rollout.rewards import ModelReward
    from prefopt.rollout.sampler import HFSampler, SamplingConfig
    from prefopt.testbed import world as W
    from prefopt.core.rng import seed_everything
    from prefopt.core.config import ModelConfig
    from prefopt.run.prepare import EVAL_SEED_OFFSET, base_policy, prepare_data
    from prefopt.run.summary import RunSummary

    t0 = time.perf_counter()
    tb = W.TestbedConfig(**spec["testbed"])
    ev = spec["eval"]
    seed_everything(spec["seed"])
    # π_SFT and the task's prompts, set up exactly as a training run's (dtype, attention backend).
    data = prepare_data(ModelConfig(), W.TestbedDataConfig(testbed=tb), "prompt_only", console=console)
    tok, heldout, gold_fn = data.tokenizer, data.heldout, data.gold_fn
    policy = base_policy(ModelConfig(), data, seed=spec["seed"]).eval()
    if spec.get("reward"):  # any reward source of conf/reward (e.g. an ensemble: prefopt.leaderboard.ensemble)
        from prefopt.rollout.rewards import build_reward, reward_config

        rm = build_reward(reward_config({"name": spec["reward"]["kind"], **spec["reward"]}), tokenizer=tok)
    else:
        rm = ModelReward(spec["rm_path"], tok) if spec.get("rm_path") else None
    N = int(spec["samples"])
    ns = sorted(n for n in spec["ns"] if 1 <= n <= N)
    scfg = SamplingConfig(temperature=ev["temperature"], max_new_tokens=ev["max_new_tokens"], samples_per_prompt=N,
                          prompts_per_batch=256)
    gen_s, by_split, refs = 0.0, {}, {}
    for split in ("val", "test"):
        prompts = heldout[split][: ev["num_prompts"]]
        ids = [chat_prompt_ids(tok, p) for p in prompts]
        tg = time.perf_counter()
        s = HFSampler(tok.pad_token_id, tok.eos_token_id).sample(policy, ids, scfg, seed=spec["seed"] + EVAL_SEED_OFFSET)
        gen_s += time.perf_counter() - tg
        texts = [tok.decode(c, skip_special_tokens=True) for c in s.completions]
        p_txt = [p for p in prompts for _ in range(N)]
        p_ids = [p for p in ids for _ in range(N)]
        gold = torch.tensor(gold_fn(p_txt, texts), dtype=torch.float64).view(-1, N)
        # No reward model (a task whose proxy rows are dropped): the pick is the gold reward's own (the oracle).
        proxy = rm(p_txt, texts, prompt_ids=p_ids, completion_ids=s.completions).view(-1, N) if rm else gold
        length = torch.tensor([len(c) for c in s.completions], dtype=torch.float64).view(-1, N)
        rep = torch.tensor([repetition_rate(t.split()) for t in texts], dtype=torch.float64).view(-1, N)
        # win of sample i against an independent π_SFT sample: the other N−1 samples of its prompt
        beats = (gold[:, :, None] > gold[:, None, :]).double() + 0.5 * (gold[:, :, None] == gold[:, None, :]).double()
        eye = torch.eye(N, dtype=torch.bool)
        win = beats.masked_fill(eye, 0).sum(-1) / max(N - 1, 1)
        points = []
        for n in ns:
            points.append({
                "n": n,
                "kl_to_ref": best_of_n_kl(n),
                "kl_empirical": empirical_kl(proxy, n),
                "gold_reward": float(expected_of_pick(proxy, gold, n).mean()),
                "proxy_reward": float(expected_of_pick(proxy, proxy, n).mean()) if rm else None,
                "gold_reward_oracle": float(expected_of_pick(gold, gold, n).mean()),
                "win_rate_vs_ref": float(expected_of_pick(proxy, win, n).mean()) if N > 1 else 0.5,
                "mean_length": float(expected_of_pick(proxy, length, n).mean()),
                "repetition_rate": float(expected_of_pick(proxy, rep, n).mean()),
                # the oracle's own pick (by the gold reward): its win rate, length and repetition, not the proxy pick's
                "win_rate_oracle": float(expected_of_pick(gold, win, n).mean()) if N > 1 else 0.5,
                "mean_length_oracle": float(expected_of_pick(gold, length, n).mean()),
                "repetition_rate_oracle": float(expected_of_pick(gold, rep, n).mean()),
                "kl_empirical_oracle": empirical_kl(gold, n),
            })
        by_split[split] = points
        # How the proxy scores length on π_SFT's samples (Pearson r over all samples): the direction a
        # method that climbs the proxy is expected to move the length in.
        lc = None
        if rm and length.numel() > 2 and float(length.std()) > 0 and float(proxy.double().std()) > 0:
            lc = float(torch.corrcoef(torch.stack([length.reshape(-1), proxy.double().reshape(-1)]))[0, 1])
        refs[split] = {"gold_reward_ref": float(gold.mean()),
                       "proxy_reward_ref": float(proxy.double().mean()) if rm else None,
                       "mean_length_ref": float(length.mean()), "proxy_length_corr": lc}
    # n is chosen on the validation prompts; the eval block reports that n on the test prompts.
    pick = max(by_split["val"], key=lambda p: p["gold_reward"])["n"]
    best = next(p for p in by_split["test"] if p["n"] == pick)
    eval_block = {
        "gold_reward": best["gold_reward"], "gold_reward_ref": refs["test"]["gold_reward_ref"],
        "win_rate_vs_ref": best["win_rate_vs_ref"], "kl_to_ref": best["kl_to_ref"],
        "proxy_reward": best["proxy_reward"], "proxy_reward_ref": refs["test"]["proxy_reward_ref"],
        "mean_length": best["mean_length"], "mean_length_ref": refs["test"]["mean_length_ref"],
        "repetition_rate": best["repetition_rate"], "best_n": pick,
    }
    wall = time.perf_counter() - t0
    return RunSummary(
        kind=BEST_OF_N, algo=BEST_OF_N, task=tb.task, data=tb.task, seed=spec["seed"], model="tiny",
        params={"n": pick, "samples": N, "ns": ns}, steps=0, wall_time_s=round(wall, 3), gen_time_s=round(gen_s, 3),
        train_time_s=0.0, peak_mem_mb=None, tokens_per_s=None, eval=eval_block, eval_split="test",
        cost={"examples": 0, "policy_tokens": 0,
              "samples_generated": N * sum(min(len(heldout[sp]), ev["num_prompts"]) for sp in by_split)},
        details={BEST_OF_N: by_split["test"], "best_of_n_by_split": by_split, "reference_by_split": refs}).to_dict()
