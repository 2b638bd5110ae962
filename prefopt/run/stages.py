"""One training run, in named stages: what :class:`prefopt.run.Run` (and so ``prefopt-train``) runs
for a config that asks for one run (an ensemble's members are each one: :mod:`prefopt.run.members`).

:func:`run_one` composes the pieces: typed configs (``configs``) → processes and strategy
(``_placement``) → data (``_data``) → models (``_models``) → online parts (``_online_parts``) →
placement of every model by the strategy (``_place_models``) → batch source (``_batch_source``) →
trainer (``_trainer``) → training (``_train``) → outputs (``_outputs``). Every user mistake in
the config surfaces in the first two stages, before any data or model is loaded. The stages read
the objective's declarations (``needs``) and never its name.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Union

import torch
import transformers
from omegaconf import DictConfig
from rich.console import Console

from prefopt.core import checkpoint
from prefopt.core.checkpoint import CheckpointInvalid
from prefopt.core.config import EvalConfig, ModelConfig, TrainerConfig, check_eval, check_model, check_trainer, typed
from prefopt.core.errors import Interrupted, TrainingDiverged, UserError
from prefopt.core.rng import seed_everything
from prefopt.core.sources import OfflineSource
from prefopt.core.trainer import Trainer
from prefopt.core.config import DataConfig
from prefopt.models import reference_cache
from prefopt.data.formats import prompt_text
from prefopt.data.tokenize import TokenizeReport, tokenize_rows
from prefopt.distributed.placement import Placement, setup
from prefopt.models import gguf, precision
from prefopt.models.logprobs import Scorer
from prefopt.models.load import (FrozenReference, consolidated, lazy_reference, load_policy, load_reward_model,
                                 make_reference, save_model, torch_dtype)
from prefopt.objectives.pg.value import build_value_model
from prefopt.objectives.registry import Needs, get_objective
from prefopt.rollout.evaluate import Evaluator, PairwiseEvaluator, chat_prompt_ids, heldout_pairs
from prefopt.rollout.rewards import RewardConfig, build_reward, check, reward_config
from prefopt.rollout.engine import RolloutConfig
from prefopt.rollout.engines import build_engine
from prefopt.rollout.engines import check as check_engine
from prefopt.rollout.envs import EnvConfig, build_env, env_config
from prefopt.rollout.envs.demonstrations import demonstration_rows
from prefopt.rollout.episode_eval import EpisodeDraws
from prefopt.rollout.sampler import HFSampler, SamplingConfig
from prefopt.rollout.source import BatchPlan, RolloutSource, plan_batches
from prefopt.run.prepare import EVAL_SEED_OFFSET, data_schema, prepare_data, quiet_libraries
from prefopt.run.resume import config_hash, hashed_config, resume_point
from prefopt.run.signals import RunContext, interrupted_line, stop_on_signals
from prefopt.run.summary import peak_mem_mb, print_summary, summarize, write_summary
from prefopt.testbed import world as W


def run_one(cfg: DictConfig, out_dir: str, console=None, on_start=None) -> dict:
    """One training run; returns the summary dict (also written to out_dir/summary.json).

    ``on_start`` is called once every check has passed, right before the first write to ``out_dir``
    (:class:`prefopt.run.Run` writes .hydra/ there), so that a refused run changes nothing on disk.
    SIGINT / SIGTERM raise :class:`~prefopt.core.errors.Interrupted` whose ``line`` says what was saved."""
    ctx = RunContext()
    with stop_on_signals(ctx):
        try:
            return _run(cfg, out_dir, console, on_start, ctx)
        except Interrupted as e:
            e.line = interrupted_line(e, out_dir, ctx)
            raise


@dataclass
class _Configs:
    """Stage 1's output: every section typed and checked."""

    cfg: DictConfig
    objective: Any  # an instance of the registered class (prefopt.objectives.registry.Objective)
    needs: Needs
    acfg: Any  # the objective's own Config dataclass
    mcfg: ModelConfig
    tcfg: TrainerConfig
    ecfg: EvalConfig
    dcfg: Union[DataConfig, "W.TestbedDataConfig"]
    rcfg: RewardConfig
    data_name: str
    seed: int
    run_config: dict
    task: Optional[str] = None
    gguf_path: Optional[str] = None  # the GGUF file model.* names, checked here and dequantized in _data
    micro_per_step: int = 0  # set with the process count (_placement)
    plan: Optional[BatchPlan] = None  # an online objective's rollout split, checked in _placement
    precision: str = ""  # how model.dtype was chosen (prefopt.models.precision), for the banner
    rocfg: RolloutConfig = field(default_factory=RolloutConfig)
    engine: str = "torch"  # the rollout engine rollout.engine resolved to (_placement)
    envcfg: EnvConfig = field(default_factory=EnvConfig)  # env=none: single-turn rollouts


@dataclass
class _Data:
    """Stage 2's output: the tokenized examples, the tokenizer and base weights they go with, and
    the evaluation prompts (per split: texts and their chat-templated ids)."""

    tok: transformers.PreTrainedTokenizerBase
    rows: list
    source_name: str
    examples: list
    report: TokenizeReport
    base_path: Optional[str]
    gold_fn: Optional[Callable]
    eval_sets: dict
    pairwise_eval: Optional[PairwiseEvaluator] = None
    kind: str = "paired"  # the data kind the objective trains on (needs.data, or ranked when it takes rankings)
    notes: list = field(default_factory=list)  # start-up lines about the data (e.g. pairs built from rankings)


@dataclass
class _Models:
    """Stage 3's output: the policy, its reference (frozen, adapter-disabled or precomputed) and how
    to rebuild the policy's skeleton (for the consolidated model/ under fsdp2)."""

    policy: torch.nn.Module
    reference: Optional[Any]  # FrozenReference | AdapterDisabledReference | None
    eval_reference: Any  # the reference the evaluation compares against (built lazily when training has none)
    rebuild: Callable[[], torch.nn.Module]
    precompute_ref: bool


@dataclass
class _Online:
    """Stage 4's output for objectives that declare rollouts, a reward or a value head."""

    source: Optional[RolloutSource]
    total_steps: Optional[int]
    reward: Any
    proxy_fn: Optional[Callable]  # evaluation's proxy reward: the training reward when a model is part of it
    value_model: Optional[torch.nn.Module]
    lines: list  # start-up lines


@dataclass
class _Run:
    """Everything the last stage needs."""

    c: _Configs
    d: _Data
    m: _Models
    place: Placement
    source: Any  # OfflineSource | RolloutSource
    trainer: Trainer
    evaluator: Any  # Evaluator | PairwiseEvaluator: the final evaluation (eval.split)
    out_dir: str
    console: Console
    ctx: RunContext
    t_start: float


def _run(cfg: DictConfig, out_dir: str, console, on_start, ctx: RunContext) -> dict:
    """configs → placement → data → models → online parts → placing them → batch source → trainer → train → outputs."""
    quiet_libraries()
    t_start = time.perf_counter()
    console = console or Console(stderr=False)
    c = configs(cfg)
    place = _placement(c)
    resume_from = resume_point(c.tcfg, out_dir, c.run_config, console if place.is_main else None)
    seed_everything(c.seed)
    d = _data(c, place, console)
    m = _models(c, d, place, console)
    online = _online_parts(c, d, m, place, console if place.is_main else None)
    _place_models(place, m.policy, m.reference)
    source, total_steps = _batch_source(c, d, m, online, place)
    trainer, evaluator = _trainer(c, d, m, online, source, total_steps, place, out_dir, console)
    _train(trainer, c, place, out_dir, console, on_start, resume_from, ctx)
    return _outputs(_Run(c=c, d=d, m=m, place=place, source=source, trainer=trainer, evaluator=evaluator,
                         out_dir=out_dir, console=console, ctx=ctx, t_start=t_start))


def configs(cfg: DictConfig) -> _Configs:
    """Typed configs: every mistake surfaces here (or in _placement, which knows the process
    count), before any model or data is loaded."""
    if "algo" not in cfg or "name" not in cfg.algo:
        raise UserError("config key 'algo.name' is missing; choose a preset with algo=NAME")
    Obj = get_objective(cfg.algo.name)
    acfg = typed(Obj.Config, cfg.algo, "algo")
    mcfg = typed(ModelConfig, cfg.get("model"), "model")
    tcfg = typed(TrainerConfig, cfg.get("trainer"), "trainer")
    ecfg = typed(EvalConfig, cfg.get("eval"), "eval")
    rocfg = typed(RolloutConfig, cfg.get("rollout"), "rollout")
    data_name = cfg.data.get("name", "hf")
    dcfg = typed(data_schema(data_name), cfg.get("data"), "data")
    check_eval(ecfg)
    check_model(mcfg)
    prec = precision.resolve(mcfg, cuda=torch.cuda.is_available() and not tcfg.cpu)
    mcfg.dtype = prec.dtype
    gguf_path = gguf.source_file(mcfg)
    if gguf_path is not None:
        gguf.check(gguf_path)
    objective = Obj(acfg)
    # needs: an objective may refine its class declaration from its config (no KL: no reference)
    needs = objective.needs
    rcfg = reward_config(cfg.get("reward"))
    envcfg = env_config(cfg.get("env"))
    if envcfg.name != "none" and not needs.rollouts and needs.data != "demonstrations":
        raise UserError(f"env={envcfg.name} runs multi-turn episodes as rollouts, and algo={cfg.algo.name} samples "
                        "none; accepted: env=none, an online algo (grpo, rloo, ppo, online_dpo, …), or algo=sft (the "
                        "warm start on the environment's demonstrations)")
    if needs.reward and envcfg.name == "none":  # an environment's episodes carry their own reward
        check(rcfg)
    return _Configs(cfg=cfg, objective=objective, needs=needs, acfg=acfg, mcfg=mcfg, tcfg=tcfg, ecfg=ecfg, dcfg=dcfg,
                    rcfg=rcfg, data_name=data_name, seed=int(cfg.get("seed", 0)), run_config=hashed_config(cfg),
                    task=dcfg.testbed.task if data_name != "hf" else None, gguf_path=gguf_path, precision=prec.reason,
                    rocfg=rocfg, envcfg=envcfg)


def _placement(c: _Configs) -> Placement:
    """The process group (torchrun's variables) and the strategy: where every model will be placed;
    the batch split over the processes is checked here."""
    place = setup(c.tcfg.strategy, cpu=c.tcfg.cpu, dtype=torch_dtype(c.mcfg.dtype) if c.mcfg.dtype != "auto" else None)
    if place.strategy == "fsdp2" and c.mcfg.load_in_4bit:
        raise UserError("model.load_in_4bit=true with trainer.strategy=fsdp2: bitsandbytes' 4-bit CPU weights cannot be "
                        "sharded by fully_shard; accepted: trainer.strategy=ddp (QLoRA replicated) or 16/32-bit LoRA under fsdp2")
    c.micro_per_step = check_trainer(c.tcfg, place.world)
    if c.needs.rollouts:
        c.plan = plan_batches(c.acfg, place.world, c.needs.groups)
        c.engine = check_engine(c.rocfg, c.mcfg, place.world)
    return place


def _data(c: _Configs, place: Placement, console) -> _Data:
    """Data and the tokenizer / base weights it goes with (:func:`prefopt.run.prepare.prepare_data`),
    tokenized; the held-out prompts of each split."""
    dcfg, ecfg, needs = c.dcfg, c.ecfg, c.needs
    # SFT with an environment: the warm start on its demonstrations of the data's prompts (envs/demonstrations.py).
    warm_start = c.envcfg.name != "none" and needs.data == "demonstrations"
    data = prepare_data(c.mcfg, dcfg, "prompt_only" if warm_start else needs.data, ranked=needs.ranked,
                        console=console if place.is_main else None, place=place)
    tok, rows, source_name, kind = data.tokenizer, data.rows, data.source, data.kind
    if warm_start:
        kind, source_name = "demonstrations", f"{source_name} (env={c.envcfg.name} demonstrations)"
        rows = demonstration_rows(build_env(c.envcfg), [{"row": i, "prompt_text": prompt_text(r["prompt"])}
                                                        for i, r in enumerate(rows)], tok)
    examples, report = tokenize_rows(rows, kind, tok, dcfg, source_name)
    if data.heldout is None:
        # A user's own data has no held-out prompts of the testbed's kind: evaluate KL, length and
        # repetition on the first training prompts (the gold fields stay null), for both splits.
        first = ([e["prompt_text"] for e in examples[: ecfg.num_prompts]], [list(e["prompt_ids"]) for e in examples[: ecfg.num_prompts]])
        eval_sets = {"val": first, "test": first}
    else:
        eval_sets = {sp: (ps[: ecfg.num_prompts], [chat_prompt_ids(tok, p) for p in ps[: ecfg.num_prompts]])
                     for sp, ps in data.heldout.items()}
    # The objective's data check / filter (a do-nothing hook by default), run before any model loads.
    examples = c.objective.prepare_examples(examples, rows, source_name)
    pairwise_eval = None
    if needs.head == "scalar":
        # A scalar head (reward model) is evaluated by accuracy on held-out pairs, never trained on.
        examples, pairwise_eval = heldout_pairs(examples, rows, dcfg, c.acfg, tok, data.gold_fn, c.seed, source_name)
    # The examples this run trains on (an ensemble member's bootstrap resample; after the held-out split).
    examples = c.objective.resample_examples(examples, c.seed)
    return _Data(tok=tok, rows=rows, source_name=source_name, examples=examples, report=report, base_path=data.base_path,
                 gold_fn=data.gold_fn, eval_sets=eval_sets, pairwise_eval=pairwise_eval, kind=kind, notes=data.notes)


def _models(c: _Configs, d: _Data, place: Placement, console) -> _Models:
    """The policy and its reference. Under fsdp2 only rank 0 reads weights; the others build
    skeletons on meta, filled when the models are placed (prefopt.distributed.placement)."""
    mcfg, needs, seed, tok, base_path = c.mcfg, c.needs, c.seed, d.tok, d.base_path
    sharded = place.strategy == "fsdp2" and place.world > 1
    if needs.head == "scalar":
        def load(meta):
            return load_reward_model(mcfg, path=base_path, vocab_size=len(tok), seed=seed, pad_token_id=tok.pad_token_id,
                                     meta=meta)
    else:
        def load(meta):
            return load_policy(mcfg, path=base_path, vocab_size=len(tok), seed=seed, meta=meta)
    policy = load(place.meta_init)
    precompute_ref = needs.reference and c.objective.precomputes_reference()
    reference = None
    if needs.reference and not precompute_ref:
        # Sharded: a skeleton on every rank, filled from the policy's initial weights (no second full copy).
        reference = make_reference(policy, mcfg, path=base_path, vocab_size=len(tok), seed=seed, meta=sharded)
    eval_reference = reference or lazy_reference(mcfg, base_path, vocab_size=len(tok), seed=seed, policy=policy)
    if place.strategy != "fsdp2":
        policy.to(place.device)
        eval_reference.to(place.device)
    if precompute_ref:
        # π_ref = the policy before any update: one no-grad pass, cached on disk; no reference model.
        with place.main_first():
            d.examples = reference_cache.attach(
                policy, d.examples, model_key=reference_cache.model_fingerprint(mcfg, base_path, seed),
                batch_size=c.tcfg.examples_per_device, pad_token_id=tok.pad_token_id,
                # fsdp2: rank 0's whole, not yet sharded policy, where it was loaded
                device=place.device if place.strategy != "fsdp2" else next(policy.parameters()).device,
                console=console if place.is_main else None)
    return _Models(policy=policy, reference=reference, eval_reference=eval_reference, rebuild=lambda: load(True),
                   precompute_ref=precompute_ref)


def _online_parts(c: _Configs, d: _Data, m: _Models, place: Placement, console=None) -> Optional[_Online]:
    """Online methods (objective declares rollouts / reward / value head): the reward source, the
    value head or critic (attached to the policy, so placed with it) and the rollout source."""
    needs, acfg, tok = c.needs, c.acfg, d.tok
    if not (needs.rollouts or needs.reward or needs.value_head):
        return None
    reward = proxy_fn = value_model = None
    lines = []
    if needs.reward and c.envcfg.name != "none":
        lines.append(f"reward: the environment's episode rewards (env={c.envcfg.name}); reward= is not used")
    elif needs.reward:
        reward = build_reward(c.rcfg, tokenizer=tok, device=place.device, gold_fn=d.gold_fn, task=c.task, placement=place)
        if c.rcfg.kind == "auto":
            lines.append(f"reward: auto → the testbed task's gold reward ({c.task})")
        else:
            lines.append(f"reward: {c.rcfg.name} = {reward.describe()}")
        if reward.uses_model:
            proxy_fn = lambda p, cs: reward(p, cs).tolist()  # noqa: E731
    if needs.value_head:
        value_model, desc = build_value_model(acfg, m.policy, c.mcfg, d.base_path, c.rcfg if needs.reward else None,
                                              vocab_size=len(tok), seed=c.seed, device=place.device,
                                              pad_token_id=tok.pad_token_id)
        lines.append(f"value: {desc}")
    if not needs.rollouts:
        return _Online(None, None, reward, proxy_fn, value_model, lines)
    max_new = acfg.max_new_tokens or (c.dcfg.max_length - c.dcfg.max_prompt_length)
    engine = build_engine(c.engine, c.rocfg, tokenizer=tok, policy=m.policy, model_cfg=c.mcfg, console=console)
    lines.append(f"rollout engine: {engine.describe()}")
    env = build_env(c.envcfg)
    if env is not None:
        lines.append(f"environment: {env.describe()}")
    source = RolloutSource(examples=d.examples, objective=c.objective, policy=m.policy, reward=reward,
                           sampler=engine, tokenizer=tok, max_new_tokens=max_new,
                           seed=c.seed, reference=m.reference, value_model=value_model, rank=place.rank,
                           world_size=place.world, device=place.device, placement=place, env=env)
    plan, tcfg = c.plan, c.tcfg
    rollouts_per_epoch = max(1, len(d.examples) // acfg.prompts_per_step)
    total = tcfg.max_steps if tcfg.max_steps > 0 else tcfg.epochs * rollouts_per_epoch * plan.steps_per_rollout
    lines.insert(0, f"batch: {plan.describe(acfg, place.world)}; {total} optimizer steps "
                    f"(≈{total / plan.steps_per_rollout:.0f} rollouts; {max_new} max new tokens; "
                    f"trainer.examples_per_* unused by online methods)")
    return _Online(source, total, reward, proxy_fn, value_model, lines)


def _batch_source(c: _Configs, d: _Data, m: _Models, online: Optional[_Online], place: Placement):
    """(batch source, total optimizer steps): the rollout source, or a fixed dataset's batches."""
    if online is not None and online.source is not None:
        return online.source, online.total_steps
    tcfg, tok = c.tcfg, d.tok
    def collate_examples(ex):
        batch = c.objective.collate(ex, d.kind, tok.pad_token_id)
        if m.precompute_ref:
            batch = reference_cache.add_to_batch(batch, ex)
        return batch

    source = OfflineSource(d.examples, collate_examples, tcfg.examples_per_step, tcfg.examples_per_device, seed=c.seed,
                           rank=place.rank, world_size=place.world)
    return source, tcfg.max_steps if tcfg.max_steps > 0 else tcfg.epochs * source.steps_per_epoch


def _trainer(c: _Configs, d: _Data, m: _Models, online: Optional[_Online], source, total_steps: int, place: Placement,
             out_dir: str, console):
    """The evaluators and the trainer; the start-up lines."""
    ecfg, tcfg, tok = c.ecfg, c.tcfg, d.tok
    sampler = HFSampler(tok.pad_token_id, tok.eos_token_id)
    scfg = SamplingConfig(temperature=ecfg.temperature, max_new_tokens=ecfg.max_new_tokens,
                          samples_per_prompt=ecfg.samples_per_prompt, prompts_per_batch=ecfg.prompts_per_batch)
    # Two evaluators: the final one on eval.split (the summary's eval block), and the periodic one on
    # eval.periodic_split (the training curve, and selection by the leaderboard), which never reads test prompts.
    # What fixes π_ref's held-out samples beyond prompts, sampling config and seed: computed once per machine.
    ref_key = json.dumps([reference_cache.model_fingerprint(c.mcfg, d.base_path, c.seed), d.source_name,
                          torch.backends.cpu.get_cpu_capability(), torch.__version__, transformers.__version__])
    # An env run is evaluated as it trains: held-out episodes, for π and π_ref (prefopt.rollout.episode_eval).
    env = build_env(c.envcfg)
    evaluators = {sp: Evaluator(tokenizer=tok, reference=m.eval_reference, prompts_text=d.eval_sets[sp][0],
                                prompts_ids=d.eval_sets[sp][1], sampler=sampler, cfg=scfg, gold_fn=d.gold_fn,
                                seed=c.seed + EVAL_SEED_OFFSET, proxy_fn=online.proxy_fn if online else None,
                                greedy=ecfg.greedy, ref_key=ref_key,
                                episodes=None if env is None else EpisodeDraws(
                                    env, tokenizer=tok, sampler=sampler, prompts_text=d.eval_sets[sp][0],
                                    prompts_ids=d.eval_sets[sp][1], seed=c.seed + EVAL_SEED_OFFSET))
                  for sp in {ecfg.split, ecfg.periodic_split} | ({"test"} if ecfg.periodic_test else set())}
    evaluator, periodic_evaluator = evaluators[ecfg.split], evaluators[ecfg.periodic_split]
    if ecfg.periodic_test and ecfg.periodic_split != "test":
        periodic_evaluator = _with_test(periodic_evaluator, evaluators["test"])
    if c.needs.head == "scalar":
        # A scalar head cannot generate: held-out pairwise accuracy instead, or nothing when no pairs
        # are held out (algo.eval_fraction=0).
        evaluator = periodic_evaluator = d.pairwise_eval
    scorer = Scorer(m.policy, m.reference, value_model=online.value_model if online else None)
    trainer = Trainer(objective=c.objective, policy=m.policy, source=source, scorer=scorer, cfg=tcfg,
                      out_dir=out_dir, total_steps=total_steps, evaluator=periodic_evaluator, device=place.device,
                      console=console, run_config=c.run_config, placement=place)
    if place.is_main:
        n_params = sum(p.numel() for p in m.policy.parameters())
        n_train = sum(p.numel() for p in trainer.params)
        if online is not None and online.source is not None:
            batch_line = "".join(f"  {line}\n" for line in online.lines)
        else:
            batch_line = (f"  batch: {tcfg.examples_per_step} examples/step = {tcfg.examples_per_device} examples/device × "
                          f"{place.world} process(es) × {c.micro_per_step} micro-batches; {total_steps} steps "
                          f"(≈{total_steps / max(1, source.steps_per_epoch):.2f} epochs of {source.steps_per_epoch} steps)\n")
            batch_line += "".join(f"  {line}\n" for line in (online.lines if online else []))
        ref = m.reference
        console.print(
            f"[bold]prefopt[/] algo={c.acfg.name} data={c.data_name} model={c.mcfg.name} seed={c.seed} → {out_dir}\n"
            f"  data: {d.report.rows_kept}/{d.report.rows_in} rows kept ({d.report.dropped} dropped, {d.report.truncated} "
            f"truncated), {len(d.examples)} {d.kind} examples from {d.source_name}\n"
            + "".join(f"  {line}\n" for line in d.notes) +
            f"{batch_line}"
            f"  params: {n_params:,} ({n_train:,} trainable); reference: "
            f"{type(ref).__name__ if ref else ('precomputed' if c.needs.reference else 'none')}; device: {place.device}\n"
            f"  precision: {c.precision}"
        )
    _print_placement(place, m.policy, trainer, tcfg, console)
    return trainer, evaluator


def _with_test(periodic: Callable, test: Callable) -> Callable:
    """eval.periodic_test: each periodic evaluation also on the test prompts, logged as eval/test/…, so that a
    step chosen on the validation curve (an over-optimisation peak) has its test number without a rerun."""
    def evaluate(policy):
        out = periodic(policy)
        extra = test(policy) or {}
        return None if out is None else {**out, **{f"test/{k}": v for k, v in extra.items()}}
    return evaluate


def _train(trainer: Trainer, c: _Configs, place: Placement, out_dir: str, console, on_start, resume_from: Optional[str],
           ctx: RunContext):
    """From here on the run writes into out_dir (every check has passed): resume, then the loop."""
    tcfg = c.tcfg
    if on_start is not None and place.is_main:
        on_start()
    if tcfg.resume and place.is_main:
        removed = checkpoint.remove_partial(out_dir)
        if removed:
            console.print(f"  removed {len(removed)} partial checkpoint write(s) of an interrupted run: {', '.join(removed)}",
                          soft_wrap=True)
    if resume_from:
        try:
            trainer.load_checkpoint(resume_from)
        except CheckpointInvalid as e:
            raise UserError(str(e)) from None
        if place.is_main:
            console.print(f"  resumed from {resume_from} (step {trainer.state.step})", soft_wrap=True)
    elif tcfg.resume:
        trainer.truncate_metrics(0)  # a fresh start: an earlier attempt's rows would interleave with this one's
    ctx.trainer = trainer
    try:
        trainer.fit()
    except TrainingDiverged as e:
        raise UserError(str(e)) from None


def _outputs(r: _Run) -> dict:
    """model/ first (an evaluation that fails must never cost the trained weights), then the final
    evaluation and summary.json."""
    c, d, m, place, trainer, ctx = r.c, r.d, r.m, r.place, r.trainer, r.ctx
    tcfg, policy, is_main = c.tcfg, m.policy, place.is_main
    if tcfg.save_model:
        ctx.phase = "saving the model"
        if place.strategy == "fsdp2":
            # Gathered to rank 0's CPU, one tensor at a time, into a plain copy: model/ is a standard
            # HF artifact (full model or adapter) whatever the strategy.
            full = place.full_state_dict(policy)
            if is_main:
                save_model(consolidated(full, m.rebuild), d.tok, os.path.join(r.out_dir, "model"))
            del full
        elif is_main:
            save_model(policy, d.tok, os.path.join(r.out_dir, "model"))
        place.barrier()
        ctx.model_saved = True
    ctx.phase = "evaluation"
    periodic_evaluator = trainer.evaluator
    ev = trainer.evaluate(r.evaluator) if tcfg.eval_at_end else None
    ev_periodic = None
    if tcfg.eval_at_end and tcfg.eval_every_steps > 0 and periodic_evaluator is not r.evaluator:
        # The curve's last point, on the periodic split (where a selection reads it).
        ev_periodic = trainer.evaluate(periodic_evaluator)
        if ev_periodic is not None:
            trainer.log({"step": trainer.state.step,
                         **{f"eval/{k}": v for k, v in ev_periodic.items() if isinstance(v, (int, float))}})
    # Every rank's peak memory and what it holds: the summary reports the max over ranks.
    held = place.held_bytes(policy, trainer.optimizer)
    memory = {"strategy": place.strategy, "world_size": place.world,
              "peak_mem_mb_per_rank": _gather(place, round(peak_mem_mb(place.device), 1)),
              "params_bytes_per_rank": _gather(place, held["params"]),
              "optimizer_bytes_per_rank": _gather(place, held["optimizer"])}
    # A reward model held out no pairs (algo.eval_fraction=0): no evaluation, so no split.
    eval_split = "heldout_pairs" if d.pairwise_eval is not None else None if c.needs.head == "scalar" else c.ecfg.split
    summary = None
    if is_main:
        summary = write_summary(summarize(
            algo=c.acfg.name, params={k: v for k, v in asdict(c.acfg).items() if k != "name"}, task=c.task,
            data=c.data_name, seed=c.seed, model=c.mcfg.name, state=trainer.state, t_start=r.t_start, memory=memory,
            ev=ev, eval_split=eval_split, ev_periodic=ev_periodic,
            cost={"examples": len(d.examples), "policy_tokens": trainer.state.tokens,
                  "samples_generated": r.source.samples_generated},
            config_hash=config_hash(c.cfg)), r.out_dir)
        print_summary(summary, r.console)
    place.barrier()
    return summary


def _gather(place: Placement, value) -> list:
    """``value`` of every rank, in rank order (all ranks call it)."""
    if not place.distributed:
        return [value]
    out = [None] * place.world
    torch.distributed.all_gather_object(out, value)
    return out


def _place_models(place: Placement, policy: torch.nn.Module, reference):
    """Wrap / shard the policy (any value head or critic is its submodule by now) and the frozen
    reference by the strategy; under fsdp2 fill the skeletons from rank 0's weights."""
    full = None
    if place.strategy == "fsdp2" and place.world > 1 and place.is_main:
        # Rank 0's only full copy (its tensors, not copies): the shards are cut from it.
        full = {**dict(policy.named_buffers()), **policy.state_dict()}
    place.trainable(policy)
    place.materialize(policy, full)
    if isinstance(reference, FrozenReference):
        place.frozen(reference.model)
        if place.strategy == "fsdp2":
            reference.place = place
            own = set(reference.model.state_dict()) | {n for n, _ in reference.model.named_buffers()}
            place.materialize(reference.model, {k: v for k, v in full.items() if k in own} if full else None)
    del full


def _print_placement(place, policy, trainer, tcfg, console):
    """Strategy, world size and the bytes each rank holds (parameters now; optimizer state as it
    will be after the first step: AdamW keeps two fp32 moments per trainable element)."""
    held = place.held_bytes(policy)
    trainable = place.local_bytes(trainer.params)
    moments = {"adamw": 2, "adam": 2, "sgd": 0}[tcfg.optimizer]
    per_rank = _gather(place, (held["params"], trainable * moments))
    if place.is_main:
        mb = lambda b: f"{b / 2**20:,.1f} MB"  # noqa: E731
        console.print(f"  strategy: {place.strategy}, {place.world} process(es); per rank: "
                      + ", ".join(f"rank {r}: params {mb(p)} + optimizer state {mb(o)}" for r, (p, o) in enumerate(per_rank)),
                      soft_wrap=True)
