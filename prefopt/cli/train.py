"""The Hydra app behind ``prefopt-train`` (same as ``python -m prefopt.train``).

    prefopt-train algo=dpo algo.beta=0.05 trainer.max_steps=200 seed=1
    prefopt-train -m algo.beta=0.05,0.1,0.5 seed=0,1
    prefopt-train --cfg job

:func:`run` composes the pieces in named stages, each a short function below: typed configs
(``_configs``) → processes and strategy (``_placement``) → data (``_data``) → models (``_models``) →
online parts (``_online_parts``) → placement of every model by the strategy (``_place_models``) →
batch source (``_batch_source``) → trainer (``_trainer``) → training (``_train``) → outputs
(``_outputs``). It reads the objective's declarations (``needs``) and never its name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from prefopt.core.errors import Interrupted, UserError

GROUPS = ("algo", "model", "data", "trainer", "reward")


def _conf_options(group: str) -> list:
    from importlib.resources import files

    d = files("prefopt.conf") / group
    try:
        return sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".yaml"))
    except FileNotFoundError:
        return []


def precheck_argv(argv: list) -> None:
    """Fail fast, in one line, on what Hydra would report in many (or only after it has written into
    the run directory): an override it cannot parse, unknown group options, an unknown key, and a run
    or sweep directory that already holds a run."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import OverrideParseException

    from hydra._internal.utils import get_args_parser  # Hydra's own command line, so its flags are skipped alike

    try:
        ns = get_args_parser().parse_args(argv)
    except SystemExit:
        return  # argparse has printed its usage line; Hydra will refuse the same way
    if ns.config_name or ns.config_path or ns.config_dir or ns.experimental_rerun:
        return  # another primary config: prefopt's conf/ tree says nothing about it
    args, multirun = ns.overrides, ns.multirun
    parser = OverridesParser.create()
    overrides = []
    for a in args:
        try:
            overrides += parser.parse_overrides([a])
        except OverrideParseException as e:
            raise UserError(f"cannot parse the override '{a}' ({str(e).splitlines()[0]}); accepted: key=value "
                            "(quote values with spaces or brackets, e.g. 'key=\"a b\"')") from None
    resume = any(o.key_or_group == "trainer.resume" for o in overrides)
    choices = {}
    for o in overrides:
        key = o.key_or_group
        if key in GROUPS and o.type == OverrideType.CHANGE:
            options = _conf_options(key)
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [str(o.value())]
            for v in values:
                if v and v not in options:
                    raise UserError(f"unknown {key} '{v}'; available: {', '.join(options)}")
            choices[key] = values[0]
        for marker_key, markers, what in (("hydra.run.dir", ("metrics.jsonl", "summary.json", "checkpoints"), "run"),
                                          ("hydra.sweep.dir", ("multirun.yaml",), "sweep")):
            if key != marker_key or resume or (what == "sweep") != multirun or o.is_sweep_override():
                continue
            value = str(o.value())
            for marker in markers:
                if os.path.exists(os.path.join(value, marker)):
                    raise UserError(
                        f"{key}={value} already holds a {what} ({marker}); nothing was changed. "
                        f"Accepted: a new directory, or trainer.resume=auto to continue it"
                    )
    _check_keys_exist([o for o in overrides if o.type == OverrideType.CHANGE and o.key_or_group not in GROUPS
                       and not o.key_or_group.startswith("hydra") and "@" not in o.key_or_group and o.package is None],
                      choices)


def _check_keys_exist(overrides: list, choices: dict) -> None:
    """An override of a key that is not in the composed config: name the section's valid keys in one
    line (Hydra's message suggests ``+key``, which the typed config then rejects too)."""
    if not overrides:
        return
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf import DictConfig as DC

    from prefopt.core.config import unknown_key_message

    try:
        with initialize_config_module(config_module="prefopt.conf", version_base=None):
            cfg = compose("train", overrides=[f"{k}={v}" for k, v in choices.items()])
    except HydraException:
        return  # Hydra's own message, from the real composition
    for o in overrides:
        node = cfg
        parts = o.key_or_group.split(".")
        for i, name in enumerate(parts):
            if not isinstance(node, DC):
                break  # into a value that is not a section (e.g. null): Hydra says what is wrong
            if name not in node:
                raise UserError(unknown_key_message(".".join(parts[: i + 1]), list(node.keys())))
            child = node._get_node(name)  # the node itself: reading the value would resolve interpolations
            node = child if isinstance(child, DC) and not child._is_none() else None


def data_schema(name: str):
    """data=hf: prefopt.data.DataConfig; testbed tasks add a ``testbed`` section."""
    from prefopt.data.load import DataConfig
    from prefopt.testbed.world import TestbedDataConfig

    return DataConfig if name == "hf" else TestbedDataConfig


# Keys that say how a run is driven or shown, not what it computes: they may change on a resume.
NOT_HASHED = ("resume", "resume_allow_config_change", "progress", "tensorboard", "log_every_steps")


def hashed_config(cfg: DictConfig) -> dict:
    """The resolved config without the keys in NOT_HASHED: what fixes a run's numbers."""
    c = OmegaConf.to_container(cfg, resolve=True)
    tr = c.get("trainer", {})
    for k in NOT_HASHED:
        tr.pop(k, None)
    c.pop("output_dir", None)
    return c


def config_hash(cfg: DictConfig) -> str:
    c = hashed_config(cfg)
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_diff(old: dict, new: dict, prefix: str = "") -> list:
    """Dotted keys whose values differ between two config dicts (a key in one only counts)."""
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b, key = old.get(k, "<absent>"), new.get(k, "<absent>"), f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, key + ".")
        elif json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            out.append((key, a, b))
    return out


def versions() -> dict:
    import torch
    import transformers

    from importlib.metadata import version

    return {"prefopt": version("prefopt"), "torch": torch.__version__, "transformers": transformers.__version__}


def cpu_capability() -> str:
    """The instruction set torch's CPU kernels use (AVX512, AVX2, DEFAULT; ATEN_CPU_CAPABILITY
    lowers it): results trained under different ones agree only statistically, not bit for bit."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def quiet_libraries():
    """Keep the console to prefopt's own lines: no weight-loading bars or optional-backend notices."""
    import logging

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


@contextlib.contextmanager
def stop_on_signals(ctx: dict):
    """SIGINT and SIGTERM end a run in one line, never a traceback. Inside the training loop the first
    signal lets the step finish and be checkpointed; a second one, or one outside the loop, stops at
    once (:class:`Interrupted`). Handlers can only be set from the main thread; elsewhere this does
    nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        trainer = ctx.get("trainer")
        if trainer is not None and trainer.request_stop(signum):
            return
        raise Interrupted(signum, step=trainer.state.step if trainer is not None else None)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def interrupted_line(e: Interrupted, out_dir: str, ctx: dict) -> str:
    """What was saved and how to go on, in one line."""
    from prefopt.core import checkpoint

    trainer = ctx.get("trainer")
    where = "before training started" if trainer is None else (
        f"after step {e.step}/{trainer.total_steps}" if e.checkpoint else
        f"at step {trainer.state.step}/{trainer.total_steps} ({ctx.get('phase', 'training')})")
    saved = []
    if ctx.get("model_saved"):
        saved.append(f"the model in {os.path.join(out_dir, 'model')}")
    ckpt = e.checkpoint or (checkpoint.newest(out_dir) if trainer is not None else None)
    if ckpt:
        saved.append(f"checkpoint {ckpt}")
    how = (f"; continue with trainer.resume=auto hydra.run.dir={out_dir}" if ckpt and not ctx.get("model_saved") else "")
    return f"interrupted by {e.signame} {where}; saved: {', '.join(saved) or 'nothing'}{how}"


def run(cfg: DictConfig, out_dir: str, console=None, on_start=None) -> dict:
    """One training run; returns the summary dict (also written to out_dir/summary.json).

    ``on_start`` is called once every check has passed, right before the first write to ``out_dir``
    (the CLI writes .hydra/ there), so that a refused run changes nothing on disk. SIGINT / SIGTERM
    raise :class:`~prefopt.core.errors.Interrupted` whose ``line`` says what was saved."""
    ctx: dict = {}
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
    objective: object
    needs: object
    acfg: object
    mcfg: object
    tcfg: object
    ecfg: object
    dcfg: object
    data_name: str
    seed: int
    run_config: dict
    micro_per_step: int = 0
    task: Optional[str] = None


@dataclass
class _Data:
    """Stage 2's output: the tokenized examples, the tokenizer and base weights they go with, and
    the evaluation prompts."""

    tok: object
    rows: list
    source_name: str
    examples: list
    report: object
    base_path: Optional[str]
    gold_fn: object
    eval_sets: dict
    pairwise_eval: object = None


@dataclass
class _Models:
    """Stage 3's output: the policy, its reference (frozen, adapter-disabled or precomputed) and how
    to rebuild the policy's skeleton (for the consolidated model/ under fsdp2)."""

    policy: object
    reference: object
    eval_reference: object
    rebuild: object
    precompute_ref: bool


def _run(cfg: DictConfig, out_dir: str, console, on_start, ctx: dict) -> dict:
    """configs → data → models → online parts → placement → batch source → trainer → train → outputs."""
    from rich.console import Console

    from prefopt.core.rng import seed_everything

    quiet_libraries()
    t_start = time.perf_counter()
    console = console or Console(stderr=False)
    c = _configs(cfg)
    place = _placement(c)
    resume_from = _resume_point(c.tcfg, out_dir, c.run_config, console if place.is_main else None)
    seed_everything(c.seed)
    d = _data(c, place, console)
    m = _models(c, d, place, console)
    online = _online_parts(c, d, m, place)
    _place_models(place, m.policy, m.reference)
    source, total_steps = _batch_source(c, d, m, online, place)
    trainer, evaluator = _trainer(c, d, m, online, source, total_steps, place, out_dir, console)
    _train(trainer, c, place, out_dir, console, on_start, resume_from, ctx)
    return _outputs(trainer, evaluator, c, d, m, place, source, out_dir, console, ctx, t_start)


def _configs(cfg: DictConfig) -> _Configs:
    """Typed configs: every mistake surfaces here, before any model or data is loaded."""
    from prefopt.core.config import EvalConfig, ModelConfig, TrainerConfig, check_eval, check_model, typed
    from prefopt.objectives.registry import get_objective

    if "algo" not in cfg or "name" not in cfg.algo:
        raise UserError("config key 'algo.name' is missing; choose a preset with algo=NAME")
    Obj = get_objective(cfg.algo.name)
    acfg = typed(Obj.Config, cfg.algo, "algo")
    mcfg = typed(ModelConfig, cfg.get("model"), "model")
    tcfg = typed(TrainerConfig, cfg.get("trainer"), "trainer")
    ecfg = typed(EvalConfig, cfg.get("eval"), "eval")
    data_name = cfg.data.get("name", "hf")
    dcfg = typed(data_schema(data_name), cfg.get("data"), "data")
    check_eval(ecfg)
    check_model(mcfg)
    objective = Obj(acfg)
    # needs: an objective may refine its class declaration from its config (no KL: no reference)
    return _Configs(cfg=cfg, objective=objective, needs=objective.needs, acfg=acfg, mcfg=mcfg, tcfg=tcfg, ecfg=ecfg,
                    dcfg=dcfg, data_name=data_name, seed=int(cfg.get("seed", 0)), run_config=hashed_config(cfg),
                    task=dcfg.testbed.task if data_name != "hf" else None)


def _placement(c: _Configs):
    """The process group (torchrun's variables) and the strategy: where every model will be placed."""
    from prefopt.core.config import check_trainer
    from prefopt.models.load import torch_dtype
    from prefopt.distributed.placement import setup

    place = setup(c.tcfg.strategy, cpu=c.tcfg.cpu, dtype=torch_dtype(c.mcfg.dtype) if c.mcfg.dtype != "auto" else None)
    if place.strategy == "fsdp2" and c.mcfg.load_in_4bit:
        raise UserError("model.load_in_4bit=true with trainer.strategy=fsdp2: bitsandbytes' 4-bit CPU weights cannot be "
                        "sharded by fully_shard; accepted: trainer.strategy=ddp (QLoRA replicated) or 16/32-bit LoRA under fsdp2")
    c.micro_per_step = check_trainer(c.tcfg, place.world)
    return place


def _data(c: _Configs, place, console) -> _Data:
    """Data and the tokenizer / base weights it goes with; the held-out prompts of each split."""
    from prefopt.data import formats as D
    from prefopt.rollout.evaluate import chat_prompt_ids
    from prefopt.models.load import load_tokenizer
    from prefopt.testbed import world as W

    mcfg, dcfg, ecfg, needs = c.mcfg, c.dcfg, c.ecfg, c.needs
    show = console if place.is_main else None
    gold_fn, eval_texts, tok = None, None, None
    if c.data_name != "hf":
        with place.main_first():
            world = W.build_world(dcfg.testbed, needs.data, show)
        tok = world.tokenizer
        rows, source_name = world.rows_by_kind[needs.data], f"testbed:{dcfg.testbed.task}"
        if dcfg.num_rows:
            rows = rows[: dcfg.num_rows]
        base_path = mcfg.name_or_path or (None if mcfg.arch else world.policy_path)
        gold_fn, eval_texts = world.task.gold_reward, world.heldout
    else:
        if not dcfg.path:
            raise UserError("data=hf needs data.path=FILE_OR_NAME (a .json/.jsonl/.parquet/.csv file or a datasets name)")
        rows, source_name = D.load_rows(dcfg)
        base_path = mcfg.name_or_path
    rows = D.prepare_rows(rows, needs.data, dcfg, source_name)
    if base_path is None and mcfg.arch is None:
        # model=tiny on a user's data: the testbed's SFT policy and its word-level tokenizer.
        with place.main_first():
            base_path = W.sft_policy_path(W.TestbedConfig(), show)
    if tok is None:
        tok = load_tokenizer(mcfg.tokenizer or base_path or W.tokenizer_path(), mcfg.trust_remote_code)
    examples, report = D.tokenize_rows(rows, needs.data, tok, dcfg, source_name)
    if eval_texts is None:
        # A user's own data has no held-out prompts of the testbed's kind: evaluate KL, length and
        # repetition on the first training prompts (the gold fields stay null), for both splits.
        first = ([e["prompt_text"] for e in examples[: ecfg.num_prompts]], [list(e["prompt_ids"]) for e in examples[: ecfg.num_prompts]])
        eval_sets = {"val": first, "test": first}
    else:
        eval_sets = {sp: (ps[: ecfg.num_prompts], [chat_prompt_ids(tok, p) for p in ps[: ecfg.num_prompts]])
                     for sp, ps in eval_texts.items()}
    # Objective hooks (optional, read by declaration, never by name): a data check / filter run
    # before any model loads.
    prepare_examples = getattr(c.objective, "prepare_examples", None)
    if prepare_examples is not None:
        examples = prepare_examples(examples, rows, source_name)
    pairwise_eval = None
    if needs.head == "scalar":
        # A scalar head (reward model) is evaluated by accuracy on held-out pairs, never trained on.
        examples, pairwise_eval = _heldout_pairs(examples, rows, dcfg, c.acfg, tok, gold_fn, c.seed, source_name)
    return _Data(tok=tok, rows=rows, source_name=source_name, examples=examples, report=report, base_path=base_path,
                 gold_fn=gold_fn, eval_sets=eval_sets, pairwise_eval=pairwise_eval)


def _models(c: _Configs, d: _Data, place, console) -> _Models:
    """The policy and its reference. Under fsdp2 only rank 0 reads weights; the others build
    skeletons on meta, filled when the models are placed (prefopt.distributed.placement)."""
    from prefopt.models.load import lazy_reference, load_policy, load_reward_model, make_reference

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
    precompute_ref = bool(needs.reference and getattr(c.acfg, "precompute_ref", False))
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
        from prefopt.data import reference_cache

        with place.main_first():
            d.examples = reference_cache.attach(
                policy, d.examples, model_key=reference_cache.model_fingerprint(mcfg, base_path, seed),
                batch_size=c.tcfg.examples_per_device, pad_token_id=tok.pad_token_id,
                # fsdp2: rank 0's whole, not yet sharded policy, where it was loaded
                device=place.device if place.strategy != "fsdp2" else next(policy.parameters()).device,
                console=console if place.is_main else None)
    return _Models(policy=policy, reference=reference, eval_reference=eval_reference, rebuild=lambda: load(True),
                   precompute_ref=precompute_ref)


def _online_parts(c: _Configs, d: _Data, m: _Models, place):
    """Online methods (objective declares rollouts / reward / value head): reward source, value head
    or critic (attached to the policy, so placed with it), rollout source (prefopt/rollout/source.py)."""
    needs = c.needs
    if not (needs.rollouts or needs.reward or needs.value_head):
        return None
    from prefopt.rollout.source import setup_online

    return setup_online(c.cfg, c.objective, needs, acfg=c.acfg, examples=d.examples, policy=m.policy, reference=m.reference,
                        tokenizer=d.tok, dcfg=c.dcfg, mcfg=c.mcfg, tcfg=c.tcfg, base_path=d.base_path, gold_fn=d.gold_fn,
                        task=c.task, seed=c.seed, rank=place.rank, world_size=place.world, device=place.device,
                        placement=place)


def _batch_source(c: _Configs, d: _Data, m: _Models, online, place):
    """(batch source, total optimizer steps): the rollout source, or a fixed dataset's batches."""
    from prefopt.data import formats as D
    from prefopt.core.sources import OfflineSource

    if online is not None and online.source is not None:
        return online.source, online.total_steps
    tcfg, tok = c.tcfg, d.tok
    # An objective's own collate replaces data.collate (e.g. KTO's mismatched pairs).
    objective_collate = getattr(c.objective, "collate", None)

    def collate_examples(ex):
        batch = objective_collate(ex, tok.pad_token_id) if objective_collate else D.collate(ex, c.needs.data, tok.pad_token_id)
        if m.precompute_ref:
            from prefopt.data import reference_cache

            batch = reference_cache.add_to_batch(batch, ex)
        return batch

    source = OfflineSource(d.examples, collate_examples, tcfg.examples_per_step, tcfg.examples_per_device, seed=c.seed,
                           rank=place.rank, world_size=place.world)
    return source, tcfg.max_steps if tcfg.max_steps > 0 else tcfg.epochs * source.steps_per_epoch


def _trainer(c: _Configs, d: _Data, m: _Models, online, source, total_steps, place, out_dir, console):
    """The evaluators and the trainer; the start-up lines."""
    from prefopt.rollout.evaluate import Evaluator
    from prefopt.rollout.sampler import HFSampler, SamplingConfig
    from prefopt.core.trainer import Trainer

    ecfg, tcfg, tok = c.ecfg, c.tcfg, d.tok
    sampler = HFSampler(tok.pad_token_id, tok.eos_token_id)
    scfg = SamplingConfig(temperature=ecfg.temperature, max_new_tokens=ecfg.max_new_tokens,
                          samples_per_prompt=ecfg.samples_per_prompt, prompts_per_batch=ecfg.prompts_per_batch)
    # Two evaluators: the final one on eval.split (the summary's eval block), and the periodic one on
    # eval.periodic_split (the training curve, and selection by the leaderboard), which never reads test prompts.
    evaluators = {sp: Evaluator(tokenizer=tok, reference=m.eval_reference, prompts_text=d.eval_sets[sp][0],
                                prompts_ids=d.eval_sets[sp][1], sampler=sampler, cfg=scfg, gold_fn=d.gold_fn,
                                seed=c.seed + 7919, proxy_fn=online.proxy_fn if online else None)
                  for sp in {ecfg.split, ecfg.periodic_split}}
    evaluator, periodic_evaluator = evaluators[ecfg.split], evaluators[ecfg.periodic_split]
    if d.pairwise_eval is not None:  # a scalar head: held-out pairwise accuracy instead
        evaluator = periodic_evaluator = d.pairwise_eval
    trainer = Trainer(objective=c.objective, policy=m.policy, reference=m.reference, source=source, cfg=tcfg,
                      out_dir=out_dir, total_steps=total_steps, evaluator=periodic_evaluator, device=place.device,
                      console=console, run_config=c.run_config, placement=place,
                      value_model=online.value_model if online else None)
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
            f"truncated), {len(d.examples)} {c.needs.data} examples from {d.source_name}\n"
            f"{batch_line}"
            f"  params: {n_params:,} ({n_train:,} trainable); reference: "
            f"{type(ref).__name__ if ref else ('precomputed' if c.needs.reference else 'none')}; device: {place.device}"
        )
    _print_placement(place, m.policy, trainer, tcfg, console)
    return trainer, evaluator


def _train(trainer, c: _Configs, place, out_dir, console, on_start, resume_from, ctx):
    """From here on the run writes into out_dir (every check has passed): resume, then the loop."""
    from prefopt.core import checkpoint
    from prefopt.core.checkpoint import CheckpointInvalid
    from prefopt.core.errors import TrainingDiverged

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
    ctx["trainer"] = trainer
    try:
        trainer.fit()
    except TrainingDiverged as e:
        raise UserError(str(e)) from None


def _outputs(trainer, evaluator, c: _Configs, d: _Data, m: _Models, place, source, out_dir, console, ctx, t_start):
    """model/ first (an evaluation that fails must never cost the trained weights), then the final
    evaluation and summary.json."""
    from prefopt.core.records import finite_or_none

    tcfg, policy, is_main = c.tcfg, m.policy, place.is_main
    if tcfg.save_model:
        from prefopt.models.load import consolidated, save_model

        ctx["phase"] = "saving the model"
        if place.strategy == "fsdp2":
            # Gathered to rank 0's CPU, one tensor at a time, into a plain copy: model/ is a standard
            # HF artifact (full model or adapter) whatever the strategy.
            full = place.full_state_dict(policy)
            if is_main:
                save_model(consolidated(full, m.rebuild), d.tok, os.path.join(out_dir, "model"))
            del full
        elif is_main:
            save_model(policy, d.tok, os.path.join(out_dir, "model"))
        place.barrier()
        ctx["model_saved"] = True
    ctx["phase"] = "evaluation"
    periodic_evaluator = trainer.evaluator
    ev = trainer.evaluate(evaluator) if tcfg.eval_at_end else None
    ev_periodic = None
    if tcfg.eval_at_end and tcfg.eval_every_steps > 0 and periodic_evaluator is not evaluator:
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
    summary = None
    if is_main:
        acfg = c.acfg
        summary = {
            "algo": acfg.name,
            "task": c.task,
            "data": c.data_name,
            "seed": c.seed,
            "model": c.mcfg.name,
            "params": {k: v for k, v in asdict(acfg).items() if k != "name"},
            "steps": trainer.state.step,
            "wall_time_s": round(time.perf_counter() - t_start, 3),
            "gen_time_s": round(trainer.state.gen_time_s, 3),
            "train_time_s": round(trainer.state.train_time_s, 3),
            "peak_mem_mb": max(memory["peak_mem_mb_per_rank"]),
            "memory": memory,
            "tokens_per_s": round(trainer.state.tokens / max(trainer.state.train_time_s, 1e-9), 1),
            "final_metrics": trainer.state.history[-1] if trainer.state.history else None,
            "eval": ev,
            "eval_split": c.ecfg.split if d.pairwise_eval is None else "heldout_pairs",
            # The same evaluation on the periodic split (null unless trainer.eval_every_steps > 0).
            "eval_periodic": ev_periodic,
            "cost": {"examples": len(d.examples), "policy_tokens": trainer.state.tokens,
                     "samples_generated": getattr(source, "samples_generated", 0)},
            "config_hash": config_hash(c.cfg),
            "versions": versions(),
            # Float rounding (and so every trained number) depends on the kernels torch picked.
            "cpu_capability": cpu_capability(),
        }
        summary = finite_or_none(summary)
        tmp = os.path.join(out_dir, ".summary.json.tmp")
        with open(tmp, "w") as f:
            json.dump(summary, f, indent=2, allow_nan=False)
        os.replace(tmp, os.path.join(out_dir, "summary.json"))
        print_summary(summary, console)
    place.barrier()
    return summary


def peak_mem_mb(device) -> float:
    import resource

    import torch

    """This process's peak memory (the summary reports the max over processes)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _gather(place, value) -> list:
    """``value`` of every rank, in rank order (all ranks call it)."""
    if not place.distributed:
        return [value]
    import torch.distributed as dist

    out = [None] * place.world
    dist.all_gather_object(out, value)
    return out


def _place_models(place, policy, reference):
    """Wrap / shard the policy (any value head or critic is its submodule by now) and the frozen
    reference by the strategy; under fsdp2 fill the skeletons from rank 0's weights."""
    from prefopt.models.load import FrozenReference

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


def _resume_point(tcfg, out_dir: str, run_config: dict, console) -> Optional[str]:
    """The checkpoint to resume from (None: start at step 0), checked before anything is loaded or
    written: a resume that would be refused must leave out_dir as it is."""
    from prefopt.core import checkpoint

    if not tcfg.resume:
        if os.path.exists(os.path.join(out_dir, "metrics.jsonl")):
            raise UserError(f"output directory {out_dir} already holds a run; nothing was changed. "
                            "Accepted: a new hydra.run.dir, or trainer.resume=auto to continue it")
        return None
    if tcfg.resume == "auto":
        path, skipped = checkpoint.find(out_dir)
        for p, why in skipped:
            if console is not None:
                console.print(f"  skipping checkpoint {p}: {why}" + (f"; resuming from {path}" if path else ""),
                              soft_wrap=True)
        if path is None:
            if os.path.exists(os.path.join(out_dir, "summary.json")):
                raise UserError(f"trainer.resume=auto: {out_dir} holds a finished run (summary.json) and no complete "
                                "checkpoint to continue from; nothing was changed. Accepted: a new hydra.run.dir")
            if console is not None and os.path.exists(os.path.join(out_dir, "metrics.jsonl")):
                console.print(f"  no complete checkpoint in {out_dir}: starting from step 0 "
                              "(the earlier attempt's metrics.jsonl rows are dropped)", soft_wrap=True)
            return None
    else:
        path = tcfg.resume
        if not os.path.isdir(path):
            raise UserError(f"trainer.resume: '{path}' is not a checkpoint directory; accepted: auto or a path")
        why = checkpoint.verify(path)
        if why is not None:
            raise UserError(f"trainer.resume: checkpoint {path}: {why}; accepted: a complete prefopt checkpoint "
                            "(checkpoints/step_N with its manifest.json)")
    saved = checkpoint.saved_config(path)
    if saved is not None and not tcfg.resume_allow_config_change:
        diff = config_diff(saved, run_config)
        # Most telling first: a changed preset's name, then changed values, then keys only one side has.
        diff.sort(key=lambda d: (not d[0].endswith(".name"), "<absent>" in (d[1], d[2])))
        if diff:
            shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diff[:5]) + ("; ..." if len(diff) > 5 else "")
            raise UserError(f"trainer.resume: the config differs from the one checkpoint {path} was written under "
                            f"({len(diff)} key(s): {shown}); nothing was changed. Accepted: the original values, or "
                            "trainer.resume_allow_config_change=true to continue under the new ones")
    return path


def _heldout_pairs(examples, rows, dcfg, acfg, tok, gold_fn, seed, source_name):
    """(training pairs, PairwiseEvaluator on held-out pairs) for a scalar head (reward model).

    Held out: ``data.eval_split`` when set (user data), else a seeded ``data.eval_fraction`` or
    ``algo.eval_fraction`` of the pairs. On the testbed the gold reward of each held-out completion
    is attached too, for accuracy against the gold ordering."""
    import random

    from prefopt.data import formats as D
    from prefopt.rollout.evaluate import PairwiseEvaluator

    eval_examples = None
    if getattr(dcfg, "eval_split", None) and dcfg.name == "hf":
        eval_rows, _ = D.load_rows(dcfg, dcfg.eval_split)
        eval_rows = D.prepare_rows(eval_rows, "paired", dcfg, f"{source_name}[{dcfg.eval_split}]")
        eval_examples, _ = D.tokenize_rows(eval_rows, "paired", tok, dcfg, f"{source_name}[{dcfg.eval_split}]")
        rows = eval_rows
    else:
        frac = dcfg.eval_fraction or getattr(acfg, "eval_fraction", 0.0)
        if frac <= 0:
            return examples, None
        n_eval = max(1, round(len(examples) * frac))
        if n_eval >= len(examples):
            raise UserError(f"{source_name}: holding out {frac} of {len(examples)} pairs for evaluation leaves none "
                            "to train on; accepted: a smaller algo.eval_fraction, or more pairs")
        held = set(random.Random(seed).sample(range(len(examples)), n_eval))
        eval_examples = [ex for i, ex in enumerate(examples) if i in held]
        examples = [ex for i, ex in enumerate(examples) if i not in held]
    gold = None
    if gold_fn is not None:
        text = lambda v: v if isinstance(v, str) else v[-1]["content"]  # noqa: E731
        prompts = [ex["prompt_text"] for ex in eval_examples]
        gold = list(zip(gold_fn(prompts, [text(rows[ex["row"]]["chosen"]) for ex in eval_examples]),
                        gold_fn(prompts, [text(rows[ex["row"]]["rejected"]) for ex in eval_examples])))
    return examples, PairwiseEvaluator(eval_examples, lambda ex: D.collate(ex, "paired", tok.pad_token_id), gold=gold)


def print_summary(s: dict, console):
    from rich.table import Table

    ev = s.get("eval") or {}
    t = Table(title=f"{s['algo']} on {s.get('task') or s.get('data')} (seed {s['seed']}, {s['steps']} steps)")
    t.add_column("")
    t.add_column("policy π", justify="right")
    t.add_column("reference π_ref", justify="right")
    f = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    t.add_row("gold reward", f(ev.get("gold_reward")), f(ev.get("gold_reward_ref")))
    t.add_row("win rate vs π_ref", f(ev.get("win_rate_vs_ref")), "0.500" if ev.get("win_rate_vs_ref") is not None else "—")
    t.add_row("KL(π‖π_ref)", f(ev.get("kl_to_ref")), "0.000")
    t.add_row("mean length (tokens)", f(ev.get("mean_length")), f(ev.get("mean_length_ref")))
    t.add_row("repetition rate", f(ev.get("repetition_rate")), "")
    if ev.get("pairwise_accuracy") is not None:  # a reward model
        t.add_row("held-out pairwise accuracy", f(ev.get("pairwise_accuracy")), "")
        t.add_row("… against the gold ordering", f(ev.get("pairwise_accuracy_gold")), "")
    console.print(t)
    console.print(f"  wall {s['wall_time_s']:.1f}s, {s['tokens_per_s']:,.0f} tokens/s, peak memory {s['peak_mem_mb']:,.0f} MB")


def run_stamp() -> str:
    """The run directory's time stamp. Processes started together by torchrun / accelerate launch
    (WORLD_SIZE > 1) share their launcher, so they take its start time and agree on one directory;
    a single process uses the current time to the microsecond."""
    import datetime

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import psutil

        parent = psutil.Process(os.getppid())
        t = datetime.datetime.fromtimestamp(parent.create_time())
        return t.strftime("%H-%M-%S-") + f"{t.microsecond:06d}-p{parent.pid}"
    return datetime.datetime.now().strftime("%H-%M-%S-%f")


def _hydra_main():
    import hydra
    from hydra.core.hydra_config import HydraConfig

    if not OmegaConf.has_resolver("prefopt_stamp"):
        OmegaConf.register_new_resolver("prefopt_stamp", run_stamp, use_cache=True)

    @hydra.main(config_path="pkg://prefopt.conf", config_name="train", version_base=None)
    def app(cfg: DictConfig):
        hc = HydraConfig.get()
        out_dir = hc.runtime.output_dir

        def write_hydra_dir():
            # What Hydra writes into .hydra/ (hydra.output_subdir is null so that it does not write
            # them before prefopt's checks), plus the resolved config (Hydra's copy keeps interpolations).
            d = os.path.join(out_dir, ".hydra")
            os.makedirs(d, exist_ok=True)
            for name, node, resolve in (("config.yaml", cfg, False), ("resolved.yaml", cfg, True),
                                        ("hydra.yaml", OmegaConf.create({"hydra": hc}), False),
                                        ("overrides.yaml", hc.overrides.task, False)):
                with open(os.path.join(d, name), "w", encoding="utf-8") as f:
                    f.write(OmegaConf.to_yaml(node, resolve=resolve))

        try:
            return run(cfg, out_dir, on_start=write_hydra_dir)
        except UserError as e:
            if int(os.environ.get("RANK", "0")) == 0:  # every process finds the same mistake: one line, not one per rank
                print(f"prefopt-train: error: {e}", file=sys.stderr)
            if not os.path.isdir(os.path.join(out_dir, ".hydra")):  # refused before it started
                _remove_if_untouched(out_dir)
            sys.exit(2)
        except Interrupted as e:
            print(f"prefopt-train: {getattr(e, 'line', None) or f'interrupted by {e.signame}'}", file=sys.stderr)
            sys.exit(e.exit_code)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            print(f"prefopt-train: error: no space left on device writing {e.filename or out_dir}; what was complete "
                  "before is intact. Free some space, then resume with trainer.resume=auto", file=sys.stderr)
            sys.exit(1)

    app()


def _remove_if_untouched(out_dir: str) -> None:
    """A refused run leaves no trace: Hydra made its directory and an empty job log before prefopt
    could check anything. Only a directory that holds nothing but empty logs goes."""
    try:
        names = os.listdir(out_dir)
        if any(not n.endswith(".log") or os.path.getsize(os.path.join(out_dir, n)) for n in names):
            return
        for n in names:
            os.remove(os.path.join(out_dir, n))
        # Not its (date) parent: a run starting beside it may have just made it and be about to use it.
        os.rmdir(out_dir)
    except OSError:
        pass


def _multirun_record(argv: list):
    """(path, bytes) of the multirun.yaml a resumed sweep would overwrite, or None. Hydra rewrites it
    before any job runs; the sweep it describes is the one whose jobs are continued (resume refuses a
    changed config), so the original record is put back afterwards."""
    if not any(a in ("-m", "--multirun") for a in argv):
        return None
    for a in argv:
        if a.startswith("hydra.sweep.dir="):
            p = os.path.join(a.split("=", 1)[1], "multirun.yaml")
            if os.path.isfile(p):
                with open(p, "rb") as f:
                    return p, f.read()
    return None


def main():
    argv = sys.argv[1:]
    record = None
    # Until run() takes over the signals (and after it), Ctrl-C is one line too.
    with stop_on_signals({}):
        try:
            try:
                precheck_argv(argv)
            except UserError as e:
                print(f"prefopt-train: error: {e}", file=sys.stderr)
                sys.exit(2)
            record = _multirun_record(argv)
            _hydra_main()
        except Interrupted as e:
            print(f"prefopt-train: interrupted by {e.signame}", file=sys.stderr)
            sys.exit(e.exit_code)
        finally:
            if record is not None:
                path, data = record
                with open(path + ".tmp", "wb") as f:
                    f.write(data)
                os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
