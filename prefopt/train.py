"""The Hydra app behind ``prefopt-train`` (same as ``python -m prefopt.train``).

    prefopt-train algo=dpo algo.beta=0.05 trainer.max_steps=200 seed=1
    prefopt-train -m algo.beta=0.05,0.1,0.5 seed=0,1
    prefopt-train --cfg job

:func:`run` composes the pieces: typed configs → data → models → objective → trainer → evaluation
→ outputs. It reads the objective's declarations (``needs``) and never its name.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from prefopt.errors import UserError

GROUPS = ("algo", "model", "data", "trainer", "reward")


def _conf_options(group: str) -> list:
    from importlib.resources import files

    d = files("prefopt.conf") / group
    try:
        return sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".yaml"))
    except FileNotFoundError:
        return []


def precheck_argv(argv: list) -> None:
    """Fail fast, in one line, on what Hydra would report in many: unknown group options, and
    a run directory that already holds a run."""
    resume = any(a.startswith("trainer.resume=") for a in argv)
    for a in argv:
        if "=" not in a or a.startswith(("-", "+", "~")):
            continue
        key, value = a.split("=", 1)
        if key in GROUPS:
            options = _conf_options(key)
            values = value[len("choice(") : -1] if value.startswith("choice(") else value
            for v in values.split(","):
                v = v.strip()
                if v and v not in options:
                    raise UserError(f"unknown {key} '{v}'; available: {', '.join(options)}")
        if key == "hydra.run.dir" and not resume:
            for marker in ("metrics.jsonl", "summary.json", "checkpoints"):
                if os.path.exists(os.path.join(value, marker)):
                    raise UserError(
                        f"hydra.run.dir={value} already holds a run ({marker}); nothing was changed. "
                        "Accepted: a new directory, or trainer.resume=auto to continue it"
                    )


def data_schema(name: str):
    """data=hf: prefopt.data.DataConfig; testbed tasks add a ``testbed`` section."""
    from prefopt.data import DataConfig
    from prefopt.testbed.world import TestbedDataConfig

    return DataConfig if name == "hf" else TestbedDataConfig


def config_hash(cfg: DictConfig) -> str:
    c = OmegaConf.to_container(cfg, resolve=True)
    tr = c.get("trainer", {})
    for k in ("resume", "progress", "tensorboard", "log_every_steps"):
        tr.pop(k, None)
    c.pop("output_dir", None)
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


def run(cfg: DictConfig, out_dir: str, console=None) -> dict:
    """One training run; returns the summary dict (also written to out_dir/summary.json)."""
    quiet_libraries()
    import torch
    from accelerate import Accelerator
    from rich.console import Console

    from prefopt import data as D
    from prefopt.config import EvalConfig, ModelConfig, TrainerConfig, check_trainer, typed
    from prefopt.evaluate import Evaluator, chat_prompt_ids
    from prefopt.models import lazy_reference, load_policy, load_reward_model, load_tokenizer, make_reference
    from prefopt.registry import get_objective
    from prefopt.rollout import HFSampler, SamplingConfig
    from prefopt.trainer import OfflineSource, Trainer, TrainingDiverged, peak_mem_mb, seed_everything

    t_start = time.perf_counter()
    console = console or Console(stderr=False)

    # 1. Typed configs: every mistake surfaces here, before any model or data is loaded.
    if "algo" not in cfg or "name" not in cfg.algo:
        raise UserError("config key 'algo.name' is missing; choose a preset with algo=NAME")
    Obj = get_objective(cfg.algo.name)
    acfg = typed(Obj.Config, cfg.algo, "algo")
    mcfg: ModelConfig = typed(ModelConfig, cfg.get("model"), "model")
    tcfg: TrainerConfig = typed(TrainerConfig, cfg.get("trainer"), "trainer")
    ecfg: EvalConfig = typed(EvalConfig, cfg.get("eval"), "eval")
    data_name = cfg.data.get("name", "hf")
    dcfg = typed(data_schema(data_name), cfg.get("data"), "data")
    seed = int(cfg.get("seed", 0))
    objective = Obj(acfg)
    needs = objective.needs  # an objective may refine its class declaration from its config (no KL: no reference)

    # On a machine without CUDA, accelerate only forms a (gloo) process group when told it runs on CPU.
    accelerator = Accelerator(cpu=tcfg.cpu or not torch.cuda.is_available())
    is_main = accelerator.is_main_process
    micro_per_step = check_trainer(tcfg, accelerator.num_processes)
    resume_from = None
    if tcfg.resume:
        resume_from = Trainer.newest_checkpoint(out_dir) if tcfg.resume == "auto" else tcfg.resume
        if tcfg.resume != "auto" and not os.path.isdir(tcfg.resume):
            raise UserError(f"trainer.resume: '{tcfg.resume}' is not a checkpoint directory; accepted: auto or a path")
    elif os.path.exists(os.path.join(out_dir, "metrics.jsonl")):
        raise UserError(f"output directory {out_dir} already holds a run; use a new hydra.run.dir or trainer.resume=auto")

    seed_everything(seed)
    # 2. Data and the tokenizer / base weights it goes with.
    gold_fn, eval_texts = None, None
    if data_name != "hf":
        from prefopt.testbed import world as W

        with accelerator.main_process_first():
            world = W.build_world(dcfg.testbed, needs.data, console if is_main else None)
        tok = world.tokenizer
        rows, source_name = world.rows_by_kind[needs.data], f"testbed:{dcfg.testbed.task}"
        if dcfg.num_rows:
            rows = rows[: dcfg.num_rows]
        base_path = mcfg.name_or_path or (None if mcfg.arch else world.policy_path)
        gold_fn, eval_texts = world.task.gold_reward, world.eval_prompts
    else:
        if not dcfg.path:
            raise UserError("data=hf needs data.path=FILE_OR_NAME (a .json/.jsonl/.parquet/.csv file or a datasets name)")
        rows, source_name = D.load_rows(dcfg)
        base_path = mcfg.name_or_path
        tok = None
    rows = D.prepare_rows(rows, needs.data, dcfg, source_name)
    if base_path is None and mcfg.arch is None:
        # model=tiny on a user's data: the testbed's SFT policy and its word-level tokenizer.
        from prefopt.testbed import world as W

        with accelerator.main_process_first():
            base_path = W.sft_policy_path(W.TestbedConfig(), console if is_main else None)
    if tok is None:
        from prefopt.testbed import world as W

        tok = load_tokenizer(mcfg.tokenizer or base_path or W.tokenizer_path(), mcfg.trust_remote_code)
    examples, report = D.tokenize_rows(rows, needs.data, tok, dcfg, source_name)
    if eval_texts is None:
        # A user's own data has no held-out prompts of the testbed's kind: evaluate KL, length and
        # repetition on the first training prompts (the gold fields stay null).
        eval_texts = [e["prompt_text"] for e in examples[: ecfg.num_prompts]]
        eval_ids = [list(e["prompt_ids"]) for e in examples[: ecfg.num_prompts]]
    else:
        eval_texts = eval_texts[: ecfg.num_prompts]
        eval_ids = [chat_prompt_ids(tok, p) for p in eval_texts]

    # 3. Models.
    # Objective hooks (optional, read by declaration, never by name): a data check / filter run
    # before any model loads, and a collate that replaces data.collate (e.g. KTO's mismatched pairs).
    prepare_examples = getattr(objective, "prepare_examples", None)
    if prepare_examples is not None:
        examples = prepare_examples(examples, rows, source_name)
    pairwise_eval = None
    if needs.head == "scalar":
        # A scalar head (reward model) is evaluated by accuracy on held-out pairs, never trained on.
        examples, pairwise_eval = _heldout_pairs(examples, rows, dcfg, acfg, tok, gold_fn, seed, source_name)
        policy = load_reward_model(mcfg, path=base_path, vocab_size=len(tok), seed=seed, pad_token_id=tok.pad_token_id)
    else:
        policy = load_policy(mcfg, path=base_path, vocab_size=len(tok), seed=seed)
    precompute_ref = needs.reference and getattr(acfg, "precompute_ref", False)
    reference = None
    if needs.reference and not precompute_ref:
        reference = make_reference(policy, mcfg, path=base_path, vocab_size=len(tok), seed=seed)
    eval_reference = reference or lazy_reference(mcfg, base_path, vocab_size=len(tok), seed=seed, policy=policy)
    device = accelerator.device
    policy.to(device)
    eval_reference.to(device)
    if precompute_ref:
        # π_ref = the policy before any update: one no-grad pass, cached on disk; no reference model.
        from prefopt import reference_cache

        with accelerator.main_process_first():
            examples = reference_cache.attach(
                policy, examples, model_key=reference_cache.model_fingerprint(mcfg, base_path, seed),
                batch_size=tcfg.examples_per_device, device=device, pad_token_id=tok.pad_token_id,
                console=console if is_main else None)
    objective_collate = getattr(objective, "collate", None)

    def collate_examples(ex):
        batch = objective_collate(ex, tok.pad_token_id) if objective_collate else D.collate(ex, needs.data, tok.pad_token_id)
        return reference_cache.add_to_batch(batch, ex) if precompute_ref else batch

    # 4. Batches, evaluation, trainer.
    world_size, rank = accelerator.num_processes, accelerator.process_index
    # -- online methods (issue #4): reward source, value head, rollout source (prefopt/online.py) --
    online = None
    if needs.rollouts or needs.reward or needs.value_head:
        from prefopt.online import setup_online

        online = setup_online(cfg, objective, needs, acfg=acfg, examples=examples, policy=policy, reference=reference,
                              tokenizer=tok, dcfg=dcfg, mcfg=mcfg, tcfg=tcfg, base_path=base_path, gold_fn=gold_fn,
                              task=dcfg.testbed.task if data_name != "hf" else None, seed=seed, rank=rank,
                              world_size=world_size, device=device)
    if online is not None and online.source is not None:
        source, total_steps = online.source, online.total_steps
    else:  # offline methods
        source = OfflineSource(examples, collate_examples,
                               tcfg.examples_per_step, tcfg.examples_per_device, seed=seed, rank=rank, world_size=world_size)
        total_steps = tcfg.max_steps if tcfg.max_steps > 0 else tcfg.epochs * source.steps_per_epoch
    # -- end online methods --
    sampler = HFSampler(tok.pad_token_id, tok.eos_token_id)
    scfg = SamplingConfig(temperature=ecfg.temperature, max_new_tokens=ecfg.max_new_tokens,
                          samples_per_prompt=ecfg.samples_per_prompt, prompts_per_batch=ecfg.prompts_per_batch)
    evaluator = Evaluator(tokenizer=tok, reference=eval_reference, prompts_text=eval_texts, prompts_ids=eval_ids,
                          sampler=sampler, cfg=scfg, gold_fn=gold_fn, seed=seed + 7919,
                          proxy_fn=online.proxy_fn if online else None)
    evaluator = pairwise_eval or evaluator  # a scalar head: held-out pairwise accuracy instead
    trainer = Trainer(objective=objective, policy=policy, reference=reference, source=source, cfg=tcfg, out_dir=out_dir,
                      total_steps=total_steps, evaluator=evaluator, device=device, console=console)
    if is_main:
        n_params = sum(p.numel() for p in policy.parameters())
        n_train = sum(p.numel() for p in trainer.params)
        if online is not None and online.source is not None:
            batch_line = "".join(f"  {line}\n" for line in online.lines)
        else:
            batch_line = (f"  batch: {tcfg.examples_per_step} examples/step = {tcfg.examples_per_device} examples/device × "
                          f"{world_size} process(es) × {micro_per_step} micro-batches; {total_steps} steps "
                          f"(≈{total_steps / max(1, source.steps_per_epoch):.2f} epochs of {source.steps_per_epoch} steps)\n")
            batch_line += "".join(f"  {line}\n" for line in (online.lines if online else []))
        console.print(
            f"[bold]prefopt[/] algo={acfg.name} data={data_name} model={mcfg.name} seed={seed} → {out_dir}\n"
            f"  data: {report.rows_kept}/{report.rows_in} rows kept ({report.dropped} dropped, {report.truncated} truncated), "
            f"{len(examples)} {needs.data} examples from {source_name}\n"
            f"{batch_line}"
            f"  params: {n_params:,} ({n_train:,} trainable); reference: "
            f"{type(reference).__name__ if reference else ('precomputed' if needs.reference else 'none')}; device: {device}"
        )
    if resume_from:
        trainer.load_checkpoint(resume_from)
        if is_main:
            console.print(f"  resumed from {resume_from} (step {trainer.state.step})")
    try:
        trainer.fit()
    except TrainingDiverged as e:
        raise UserError(str(e)) from None
    ev = trainer.evaluate() if tcfg.eval_at_end else None

    # 5. Outputs.
    summary = None
    if is_main:
        if tcfg.save_model:
            from prefopt.models import save_model

            save_model(policy, tok, os.path.join(out_dir, "model"))
        params = {k: v for k, v in asdict(acfg).items() if k != "name"}
        wall = time.perf_counter() - t_start
        summary = {
            "algo": acfg.name,
            "task": dcfg.testbed.task if data_name != "hf" else None,
            "data": data_name,
            "seed": seed,
            "model": mcfg.name,
            "params": params,
            "steps": trainer.state.step,
            "wall_time_s": round(wall, 3),
            "gen_time_s": round(trainer.state.gen_time_s, 3),
            "train_time_s": round(trainer.state.train_time_s, 3),
            "peak_mem_mb": round(peak_mem_mb(device), 1),
            "tokens_per_s": round(trainer.state.tokens / max(trainer.state.train_time_s, 1e-9), 1),
            "final_metrics": trainer.state.history[-1] if trainer.state.history else None,
            "eval": ev,
            "config_hash": config_hash(cfg),
            "versions": versions(),
            # Float rounding (and so every trained number) depends on the kernels torch picked.
            "cpu_capability": cpu_capability(),
        }
        tmp = os.path.join(out_dir, ".summary.json.tmp")
        with open(tmp, "w") as f:
            json.dump(summary, f, indent=2)
        os.replace(tmp, os.path.join(out_dir, "summary.json"))
        print_summary(summary, console)
    accelerator.wait_for_everyone()
    return summary


def _heldout_pairs(examples, rows, dcfg, acfg, tok, gold_fn, seed, source_name):
    """(training pairs, PairwiseEvaluator on held-out pairs) for a scalar head (reward model).

    Held out: ``data.eval_split`` when set (user data), else a seeded ``data.eval_fraction`` or
    ``algo.eval_fraction`` of the pairs. On the testbed the gold reward of each held-out completion
    is attached too, for accuracy against the gold ordering."""
    import random

    from prefopt import data as D
    from prefopt.evaluate import PairwiseEvaluator

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
        out_dir = HydraConfig.get().runtime.output_dir
        # The contract: .hydra/ holds the resolved config too (Hydra's own copy keeps interpolations).
        with open(os.path.join(out_dir, ".hydra", "resolved.yaml"), "w") as f:
            f.write(OmegaConf.to_yaml(cfg, resolve=True))
        try:
            return run(cfg, out_dir)
        except UserError as e:
            print(f"prefopt-train: error: {e}", file=sys.stderr)
            sys.exit(2)

    app()


def main():
    try:
        precheck_argv(sys.argv[1:])
    except UserError as e:
        print(f"prefopt-train: error: {e}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
