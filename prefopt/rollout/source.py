"""The online pipeline shared by every online method: rollout → reward → advantage → policy loss.

:class:`RolloutSource` is the batch source the trainer pulls from (the online counterpart of
:class:`prefopt.core.sources.OfflineSource`). Per rollout it

1. takes ``prompts_per_step`` prompts (each process a strided share, whole groups per process),
2. samples ``samples_per_prompt`` completions per prompt from the *current* policy (adapters on
   under LoRA) through a sampler (:mod:`prefopt.rollout.sampler`), timing generation separately,
3. scores them with the reward source (:mod:`prefopt.rollout.rewards`); with ``dynamic_sampling`` drops
   groups whose rewards are all equal and samples more prompts to refill (DAPO). With an environment
   (``env=NAME``, :mod:`prefopt.rollout.envs`) steps 2–3 are multi-turn episodes instead
   (:mod:`prefopt.rollout.episodes`): a sample is the whole trajectory after the prompt, its score the
   episode's reward, and ``loss_mask`` is True on the policy's own tokens only, so ratios, advantages,
   KL, entropy and length normalisation never see the environment's tokens,
4. recomputes, without gradient, log π_old (through the fused kernel, same temperature), log π_ref
   when the objective needs a reference, and V_old when it has a value head. With one optimizer
   step per rollout and no value head, the policy has not moved between sampling and the loss, so
   π_old *is* π_θ: the π_old pass is skipped, the loss takes ``sg[log π_θ]`` as log π_old (ratio
   exactly 1, gradient A ∇log π_θ; as TRL and verl do), and the sampler's own log-probs (same
   temperature, equal to a recomputation up to float rounding) serve ``prepare`` (KL in the reward,
   metrics),
5. hands the rollout to ``objective.prepare`` (the method's advantage / selection step),

then yields ``epochs_per_rollout × minibatches_per_rollout`` optimizer steps from it, each a
list of micro-batches of at most ``sequences_per_device`` sequences, reshuffled every epoch.

Batch sizes (units in the names; the trainer's ``examples_per_step`` / ``examples_per_device``
are the offline knobs and are not used here):

    sequences per rollout (all processes)  = prompts_per_step × samples_per_prompt
    sequences per optimizer step           = that / minibatches_per_rollout
    micro-batches per step per process     = that / processes / sequences_per_device
    optimizer steps per rollout            = epochs_per_rollout × minibatches_per_rollout

``trainer.max_steps`` counts optimizer steps, as for offline methods. An impossible split is a
UserError before anything loads.

Resume: the checkpoint holds the objective's state (``state_dict()``: the adaptive KL coefficient and
the moving baseline) next to the weights, and resume regenerates the current rollout from the
checkpointed policy. A run resumed from a checkpoint on a rollout boundary (``trainer.save_every_steps``
a multiple of the optimizer steps per rollout) is identical to an uninterrupted one. Mid-rollout, the
regenerated rollout comes from the partly updated policy and so differs; the objective then restarts
from its state before that rollout, so the rollout's β / baseline update is applied once, not twice.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Optional

import torch

from prefopt.core.errors import UserError
from prefopt.core.modules import dropout_disable, dropout_restore
from prefopt.core.sources import BatchSource, EpochOrder
from prefopt.data.tokenize import pad_batch
from prefopt.models.logprobs import token_stats
from prefopt.rollout.episodes import episode_metrics, mask_policy_tokens, run_episodes
from prefopt.rollout.sampler import Samples, SamplingConfig


@dataclass
class RolloutFields:
    """Rollout and batch keys every online objective's Config has (conf/algo/*.yaml)."""

    prompts_per_step: int = 16  # prompts per rollout, all processes together
    samples_per_prompt: int = 8  # completions per prompt (the group size)
    sequences_per_device: int = 64  # micro-batch of the loss's forward/backward on one device
    minibatches_per_rollout: int = 1  # optimizer steps per pass over one rollout
    epochs_per_rollout: int = 1  # passes over one rollout (PPO epochs; GRPO's μ)
    sequences_per_generate: int = 256  # generation batch on one device
    temperature: float = 1.0  # sampling, and the recomputed log-probs
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    max_new_tokens: Optional[int] = None  # None: data.max_length − data.max_prompt_length
    dynamic_sampling: bool = False  # drop groups whose rewards are all equal, refill (DAPO)
    max_rollout_rounds: int = 3  # dynamic sampling: generation rounds at most per rollout


@dataclass
class BatchPlan:
    prompts_per_process: int
    sequences_per_rollout: int
    sequences_per_step: int
    sequences_per_step_per_process: int
    micro_batches_per_step: int
    steps_per_rollout: int

    def describe(self, c: RolloutFields, world: int) -> str:
        return (f"{c.prompts_per_step} prompts/rollout × {c.samples_per_prompt} samples/prompt = "
                f"{self.sequences_per_rollout} sequences/rollout; {c.epochs_per_rollout} epoch(s) × "
                f"{c.minibatches_per_rollout} minibatch(es) = {self.steps_per_rollout} optimizer steps/rollout of "
                f"{self.sequences_per_step} sequences = {min(c.sequences_per_device, self.sequences_per_step_per_process)} "
                f"sequences/device × {world} process(es) × {self.micro_batches_per_step} micro-batches")


def plan_batches(c: RolloutFields, world_size: int = 1, needs_groups: bool = False) -> BatchPlan:
    """Check the rollout's batch split; the derived numbers. Raises UserError on an impossible one."""
    for key in ("prompts_per_step", "samples_per_prompt", "sequences_per_device", "minibatches_per_rollout",
                "epochs_per_rollout", "sequences_per_generate", "max_rollout_rounds"):
        if getattr(c, key) <= 0:
            raise UserError(f"algo.{key}={getattr(c, key)} must be a positive integer")
    if needs_groups and c.samples_per_prompt < 2:
        raise UserError(f"algo.samples_per_prompt={c.samples_per_prompt}: this advantage estimator compares samples "
                        "of the same prompt; accepted: samples_per_prompt >= 2")
    if c.prompts_per_step % world_size:
        raise UserError(f"algo.prompts_per_step={c.prompts_per_step} does not split over {world_size} processes "
                        f"(each holds whole groups); accepted: a multiple of {world_size}")
    n = c.prompts_per_step * c.samples_per_prompt
    per_proc = n // world_size
    if per_proc % c.minibatches_per_rollout:
        raise UserError(f"algo.minibatches_per_rollout={c.minibatches_per_rollout} does not divide the "
                        f"{per_proc} sequences per process of a rollout (prompts_per_step × samples_per_prompt / "
                        "processes); accepted: a divisor of it")
    step_proc = per_proc // c.minibatches_per_rollout
    micro = min(c.sequences_per_device, step_proc)
    if step_proc % micro:
        raise UserError(f"algo.sequences_per_device={c.sequences_per_device} does not divide the {step_proc} "
                        "sequences per optimizer step per process; accepted: a divisor of it (or a value >= it)")
    if c.temperature <= 0:
        raise UserError(f"algo.temperature={c.temperature} must be > 0")
    if not 0 < c.top_p <= 1:
        raise UserError(f"algo.top_p={c.top_p} must be in (0, 1]")
    if c.max_new_tokens is not None and c.max_new_tokens <= 0:
        raise UserError(f"algo.max_new_tokens={c.max_new_tokens} must be positive (or null)")
    return BatchPlan(prompts_per_process=c.prompts_per_step // world_size, sequences_per_rollout=n,
                     sequences_per_step=n // c.minibatches_per_rollout, sequences_per_step_per_process=step_proc,
                     micro_batches_per_step=step_proc // micro,
                     steps_per_rollout=c.epochs_per_rollout * c.minibatches_per_rollout)


# Rollout tensors indexed by sequence (dim 0); everything else in a rollout dict is per rollout.
PER_SEQUENCE = ("input_ids", "attention_mask", "loss_mask", "old_logps", "ref_logps", "old_values", "advantages",
                "returns", "scores", "finished", "group", "sampler_logps", "baseline_scores")


def select(roll: dict, idx) -> dict:
    """The sub-rollout of sequences ``idx`` (a LongTensor or bool mask)."""
    out = dict(roll)
    for k in PER_SEQUENCE:
        if k in roll:
            out[k] = roll[k][idx]
    for k in ("prompt_text", "completion_text"):
        if k in roll:
            ids = idx.nonzero().view(-1).tolist() if idx.dtype == torch.bool else idx.tolist()
            out[k] = [roll[k][i] for i in ids]
    return out


class RolloutSource(BatchSource):
    """Micro-batches for online methods; see the module docstring. ``reward`` is a
    :class:`prefopt.rollout.rewards.Reward`: called as ``reward(prompts, completions, prompt_ids=,
    completion_ids=, finished=, with_terms=True) -> (scores, {metric: values})``, checkpointed through
    its ``state_dict()`` / ``load_state_dict()``; for an objective with ``needs.reward_terms`` also read
    are ``last_term_values`` (each term's values of the last call, [N, R]) and ``weights`` ([R])."""

    def __init__(self, *, examples: list, objective, policy, reward, sampler, tokenizer, max_new_tokens: int,
                 seed: int, reference=None, value_model=None, rank: int = 0, world_size: int = 1, device=None,
                 placement=None, env=None):
        self.examples = examples
        self.obj = objective
        self.c: RolloutFields = objective.cfg
        self.policy = policy
        self.reference = reference
        self.value_model = value_model
        self.reward = reward
        self.sampler = sampler
        self.tok = tokenizer
        self.seed = seed
        self.rank, self.world = rank, world_size
        self.device = device or torch.device("cpu")
        self.place = placement
        self.plan = plan_batches(self.c, world_size, objective.needs.groups)
        self.max_new_tokens = max_new_tokens
        self.env = env
        self.scfg = SamplingConfig(temperature=self.c.temperature, top_p=self.c.top_p, top_k=self.c.top_k,
                                   max_new_tokens=max_new_tokens, samples_per_prompt=self.c.samples_per_prompt,
                                   prompts_per_batch=self.c.sequences_per_generate)
        if len(examples) < self.c.prompts_per_step:
            raise UserError(f"the dataset has {len(examples)} prompts, fewer than algo.prompts_per_step="
                            f"{self.c.prompts_per_step}; accepted: a smaller prompts_per_step or more prompts")
        self.last_gen_time_s = 0.0
        self.samples_generated = 0  # completions sampled so far (all rounds, greedy baselines too): a cost column
        self.last_metrics: dict = {}
        self._roll_idx, self._roll = None, None
        # The objective's state before the current rollout's prepare(), and the one to restore
        # when a resumed run regenerates an already-prepared rollout (see state_dict).
        self._obj_state_before: Optional[dict] = None
        self._resume: Optional[dict] = None
        self._order = EpochOrder(len(examples), seed)
        # π_old == π_θ at the loss when nothing updates the policy in between (module docstring, 4.).
        self.old_is_current = self.plan.steps_per_rollout == 1 and value_model is None
        # The sampler's log-probs stand for π_old only where they are the trainer's own up to rounding
        # (the torch engine); another engine's are μ, and π_old is recomputed.
        self.sampler_is_policy = sampler.exact_logprobs
        self.logp_abs_diff: Optional[float] = None  # mean |log π_old − log μ| of the last rollout, when both exist
        # An objective that corrects for the sampler (importance weights π_old/μ) keeps μ's own log-probs.
        self.keep_sampler_logps = objective.needs.sampler_logps

    env = None  # a multi-turn environment (prefopt.rollout.envs): each sample is an episode it scores

    @property
    def norm_tokens(self) -> int:
        """seq-mean-token-sum-norm's constant: the most policy tokens a sequence can hold."""
        if self.env is None:
            return self.max_new_tokens
        return min(self.env.cfg.max_turns * self.max_new_tokens, self.env.cfg.max_episode_tokens)

    @property
    def steps_per_rollout(self) -> int:
        return self.plan.steps_per_rollout

    # ---- prompts -------------------------------------------------------------------------------
    def _prompts(self, block: int) -> list:
        """Prompt block ``block`` of the concatenated epoch permutations; this process's share."""
        P = self.c.prompts_per_step
        per_epoch = len(self.examples) // P
        epoch, k = divmod(block, per_epoch)
        idx = self._order(epoch)[k * P : (k + 1) * P]
        return [self.examples[i] for i in idx[self.rank :: self.world]]

    # ---- the trainer's interface ---------------------------------------------------------------
    def state_dict(self) -> dict:
        """Checkpointed by the trainer after the objective's own state: which rollout is current and
        the objective's state from before it was prepared. Resume regenerates that rollout when it
        resumes mid-rollout, and must then start it from that earlier state."""
        # The reward's own state too (an ensemble's standardisation, frozen on the first rollout; {} for most).
        return {"rollout": self._roll_idx, "objective_before_rollout": self._obj_state_before,
                "reward": self.reward.state_dict() if self.reward is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self._resume = state if state.get("objective_before_rollout") is not None else None
        # Absent in checkpoints written before the reward's state was saved; no reward under an environment.
        if state.get("reward") is not None and self.reward is not None:
            self.reward.load_state_dict(state["reward"])

    def step_batches(self, step: int) -> list:
        r, j = divmod(step, self.plan.steps_per_rollout)
        self.last_gen_time_s, self.last_metrics = 0.0, {}
        if self._roll_idx != r:
            self._roll = self.make_rollout(r)
            self._roll_idx = r
        epoch, m = divmod(j, self.c.minibatches_per_rollout)
        roll = self._roll
        n = roll["input_ids"].shape[0]
        if n == 0:
            return []
        # An objective that reads its rollout as groups (online DPO's pairs) gets whole groups per
        # micro-batch: the shuffle and the splits are over groups of ``group_size`` rows.
        unit = int(roll["group_size"]) if self.obj.needs.whole_groups_per_micro_batch else 1
        g = torch.Generator().manual_seed(self.seed * 7_919 + r * 104_729 + epoch * 13 + self.rank)
        perm = torch.randperm(n // unit, generator=g)
        chunks = torch.tensor_split(perm, self.c.minibatches_per_rollout)[m]
        micro = max(1, min(self.c.sequences_per_device, self.plan.sequences_per_step_per_process) // unit)
        rows = lambda idx: (idx[:, None] * unit + torch.arange(unit)).reshape(-1)  # noqa: E731
        return [self._micro(roll, rows(idx)) for idx in torch.split(chunks, micro) if idx.numel()]

    def _micro(self, roll, idx) -> dict:
        b = {k: roll[k][idx] for k in PER_SEQUENCE if k in roll and isinstance(roll[k], torch.Tensor)}
        # Trim the padding columns this micro-batch does not use.
        T = int(b["attention_mask"].sum(-1).max())
        for k, v in b.items():
            if v.dim() == 2:
                b[k] = v[:, :T]
        b["norm_tokens"] = self.norm_tokens  # seq-mean-token-sum-norm's constant
        b["old_is_current"] = self.old_is_current
        return b

    # ---- one rollout ---------------------------------------------------------------------------
    def _where(self, r: int) -> str:
        """Rollout ``r``'s position as a user reads it: the optimizer step it feeds first (1-based)."""
        return f"optimizer step {r * self.plan.steps_per_rollout + 1} (rollout {r})"

    @torch.no_grad()
    def make_rollout(self, r: int) -> dict:
        """One rollout. Under fsdp2 every model it reads (policy, reference, reward model) is gathered
        once for the whole rollout, not once per token or per scoring pass; each rank then decodes and
        scores its own prompts without collectives (their counts may differ under dynamic sampling)."""
        if self.place is None:
            return self._make_rollout(r)
        with self.place.gathered():
            return self._make_rollout(r)

    def _make_rollout(self, r: int) -> dict:
        c, K = self.c, self.c.samples_per_prompt
        rounds = c.max_rollout_rounds if c.dynamic_sampling else 1
        want = self.plan.prompts_per_process
        parts, gen_s, n_groups_seen, reward_metrics = [], 0.0, 0, {}
        all_scores = []
        for q in range(rounds):
            exs = self._prompts(r * rounds + q)
            prompt_ids = [list(e["prompt_ids"]) for e in exs]
            t0 = time.perf_counter()
            self.sampler.sync_weights(self.policy)
            seed = (self.seed * 1_000_003 + r * 1_009 + q) * 31 + self.rank
            eps = None
            if self.env is not None:
                eps = run_episodes(self.env, exs, sampler=self.sampler, policy=self.policy, tokenizer=self.tok,
                                   cfg=self.scfg, seed=seed, where=self._where(r))
                s = Samples(completions=[e.ids for e in eps], finished=[e.done for e in eps],
                            logprobs=[e.logprobs for e in eps])
            else:
                s = self.sampler.sample(self.policy, prompt_ids, self.scfg, seed=seed,
                                        return_logprobs=self.old_is_current or self.keep_sampler_logps
                                        or not self.sampler_is_policy)
            gen_s += time.perf_counter() - t0
            self.samples_generated += len(s.completions)
            p_ids = [p for p in prompt_ids for _ in range(K)] if eps is None else [e.prompt_ids for e in eps]
            p_txt = [e["prompt_text"] for e in exs for _ in range(K)]
            texts = [self.tok.decode(x, skip_special_tokens=True) for x in s.completions]
            finished = torch.tensor(s.finished, dtype=torch.bool)
            if eps is None:
                scores, terms = self.reward(p_txt, texts, prompt_ids=p_ids, completion_ids=s.completions,
                                            finished=finished, with_terms=True)
            else:  # the environment's episode rewards replace the reward source's
                scores, terms = torch.tensor([e.reward for e in eps], dtype=torch.float32), episode_metrics(eps)
            for k, v in terms.items():
                reward_metrics.setdefault(k, []).append(v)
            # Each reward term apart [N, R], for an objective that normalises them one by one (GDPO).
            term_values = self.reward.last_term_values if self.obj.needs.reward_terms and eps is None \
                else scores[:, None]
            greedy = None
            if self.obj.needs.greedy_baseline and eps is not None:
                # ReMax's baseline with an environment: each prompt's greedy episode's reward.
                t1 = time.perf_counter()
                ge = run_episodes(self.env, exs, sampler=self.sampler, policy=self.policy, tokenizer=self.tok,
                                  cfg=dataclasses.replace(self.scfg, top_k=1, samples_per_prompt=1), seed=0,
                                  where=self._where(r))
                gen_s += time.perf_counter() - t1
                self.samples_generated += len(ge)
                greedy = torch.tensor([e.reward for e in ge], dtype=torch.float32)
            elif self.obj.needs.greedy_baseline:
                # ReMax's baseline: the reward of each prompt's greedy completion (top-1 decoding).
                t1 = time.perf_counter()
                gs = self.sampler.sample(self.policy, prompt_ids, dataclasses.replace(self.scfg, top_k=1, samples_per_prompt=1),
                                         seed=0)
                gen_s += time.perf_counter() - t1
                self.samples_generated += len(gs.completions)
                greedy = self.reward([e["prompt_text"] for e in exs],
                                     [self.tok.decode(x, skip_special_tokens=True) for x in gs.completions],
                                     prompt_ids=prompt_ids, completion_ids=gs.completions,
                                     finished=torch.tensor(gs.finished, dtype=torch.bool))
            all_scores.append(scores)
            keep = torch.ones(len(exs), dtype=torch.bool)
            if c.dynamic_sampling:
                keep = scores.view(-1, K).std(-1, unbiased=False) > 0
            n_groups_seen += len(exs)
            for gi in keep.nonzero().view(-1).tolist():
                sl = slice(gi * K, (gi + 1) * K)
                parts.append(dict(p=p_ids[sl], pt=p_txt[sl], c=s.completions[sl], t=texts[sl], s=scores[sl],
                                  f=finished[sl], lp=s.logprobs[sl] if s.logprobs is not None else None,
                                  v=term_values[sl], m=[e.policy_mask for e in eps[sl]] if eps is not None else None,
                                  b=greedy[gi].repeat(K) if greedy is not None else None))
            if len(parts) >= want:
                break
        parts = parts[:want]
        self.last_gen_time_s = gen_s
        roll = self._tensors(parts)
        if self._resume is not None and self._resume["rollout"] == r:
            self.obj.load_state_dict(self._resume["objective_before_rollout"])
        self._obj_state_before = self.obj.state_dict()
        self._resume = None
        roll, obj_metrics = self.obj.prepare(roll)
        # Metrics of the sampled batch (before any selection), averaged per sequence.
        sc = torch.cat(all_scores) if all_scores else torch.zeros(0)
        m = {"rollout/reward_mean": float(sc.mean()) if sc.numel() else 0.0,
             "rollout/reward_std": float(sc.std()) if sc.numel() > 1 else 0.0,
             "rollout/gen_time_s": gen_s}
        if self.logp_abs_diff is not None:
            m["rollout/logp_abs_diff_sampler"] = self.logp_abs_diff  # mean |log π_old − log μ| per token
        for k, vs in reward_metrics.items():
            v = torch.cat(vs)
            m[f"rollout/{k}"] = float(v.mean()) if v.numel() else 0.0
        if parts:
            lens = torch.tensor([len(x) for p in parts for x in p["c"]], dtype=torch.float32)
            m["rollout/completion_tokens"] = float(lens.mean())
            m["rollout/finished_frac"] = float(torch.cat([p["f"] for p in parts]).float().mean())
        if c.dynamic_sampling:
            m["rollout/groups_kept_frac"] = len(parts) / max(1, n_groups_seen)
            m["rollout/generation_rounds"] = q + 1
        m.update(obj_metrics)
        self.last_metrics = m
        return roll

    def _tensors(self, parts: list) -> dict:
        K = self.c.samples_per_prompt
        if not parts:
            z = torch.zeros(0, 1, dtype=torch.long)
            return {"input_ids": z, "attention_mask": z, "loss_mask": z.bool(), "scores": torch.zeros(0),
                    "finished": torch.zeros(0, dtype=torch.bool), "group": torch.zeros(0, dtype=torch.long),
                    "group_size": K, "prompt_text": [], "completion_text": []}
        p_ids = [x for p in parts for x in p["p"]]
        comps = [x for p in parts for x in p["c"]]
        roll = pad_batch(p_ids, comps, self.tok.pad_token_id)
        if parts[0]["m"] is not None:  # episodes: the environment's tokens are context
            mask_policy_tokens(roll["loss_mask"], [x for p in parts for x in p["m"]])
        roll["scores"] = torch.cat([p["s"] for p in parts]).float()
        if self.obj.needs.reward_terms:  # [N, R] and [R], read by prepare (GDPO)
            roll["reward_terms"] = torch.cat([p["v"] for p in parts]).float()
            # An environment's score is one term of weight 1.
            weights = self.reward.weights if self.env is None else [1.0]
            roll["reward_weights"] = torch.tensor(weights, dtype=torch.float32)
        if parts[0]["b"] is not None:
            roll["baseline_scores"] = torch.cat([p["b"] for p in parts]).float()
        roll["finished"] = torch.cat([p["f"] for p in parts])
        roll["group"] = torch.arange(len(parts)).repeat_interleave(K)
        roll["group_size"] = K
        roll["prompt_text"] = [x for p in parts for x in p["pt"]]
        roll["completion_text"] = [x for p in parts for x in p["t"]]
        # π_old, π_ref and V_old of the whole rollout, in chunks of the micro-batch size.
        needs_ref = self.reference is not None and self.obj.needs.reference
        old, ref, val = [], [], []
        lp = None
        if parts and parts[0]["lp"] is not None:
            # The sampler's log-probs, at the completion positions (where loss_mask is set, in order).
            lp = torch.zeros(roll["loss_mask"].shape)
            lp[roll["loss_mask"]] = torch.tensor([v for p in parts for x in p["lp"] for v in x])
            if self.old_is_current and self.sampler_is_policy:
                roll["old_logps"] = lp
            if self.keep_sampler_logps:
                roll["sampler_logps"] = lp
        # No dropout: π_old is a fixed function of the weights (eval() would break 4-bit training).
        flipped = dropout_disable(self.policy)
        n = roll["input_ids"].shape[0]
        for i in range(0, n, self.c.sequences_per_device):
            sl = slice(i, i + self.c.sequences_per_device)
            ids, am, lm = (roll[k][sl].to(self.device) for k in ("input_ids", "attention_mask", "loss_mask"))
            if not (self.old_is_current and self.sampler_is_policy) and self.obj.needs.old_logps:
                old.append(token_stats(self.policy, ids, am, lm, temperature=self.c.temperature).logps.cpu())
            if self.value_model is not None:
                # Right after the policy's forward: a value head on the policy reuses its hidden states.
                val.append(self.value_model.values({"input_ids": ids, "attention_mask": am, "loss_mask": lm}).float().cpu())
            if needs_ref:
                ref.append(self.reference.token_stats(ids, am, lm, temperature=self.c.temperature).logps.cpu())
        dropout_restore(flipped)
        if old:
            roll["old_logps"] = torch.cat(old)
            if lp is not None:
                m = roll["loss_mask"]
                self.logp_abs_diff = float((roll["old_logps"][m] - lp[m]).abs().mean()) if m.any() else None
        if val:
            roll["old_values"] = torch.cat(val)
        if ref:
            roll["ref_logps"] = torch.cat(ref)
        return roll
