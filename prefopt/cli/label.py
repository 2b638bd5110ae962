"""``prefopt-label``: AI feedback into a preference file (same as ``python -m prefopt.cli.label``).

    prefopt-label data=reviews judge=smollm2 out=pairs.jsonl num_prompts=64 samples_per_prompt=2

1. samples ``samples_per_prompt`` (K) completions of each of the first ``num_prompts`` training
   prompts from the policy (``model=...``; the testbed's SFT policy by default);
2. has the judge (``judge=smollm2|model|function|gold``, :mod:`prefopt.rollout.judges`) compare them;
3. writes TRL-format rows (:mod:`prefopt.label.pairs`) to ``out``, which ``prefopt-train data=hf
   data.path=FILE algo=dpo`` trains on: atomically, and never over a file that appeared there during
   the run (the rows are then kept in a sibling file the error names); then prints a summary: pairs,
   ties, agreement with the gold ordering (testbed data), the LLM judge's position-bias statistics.

Hydra overrides as for ``prefopt-train`` (conf/label.yaml composes the ``model``, ``data`` and
``judge`` groups). A user error is one line and exit status 2; nothing is written.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from typing import Optional

from prefopt.core.errors import Interrupted, UserError


@dataclass
class LabelConfig:
    """conf/label.yaml's own keys."""

    out: Optional[str] = None
    overwrite: bool = False
    num_prompts: int = 64
    samples_per_prompt: int = 2
    pairs: str = "best_vs_worst"
    seed: int = 0
    temperature: float = 1.0
    max_new_tokens: Optional[int] = None
    prompts_per_batch: int = 128


def compose_label(argv: list):
    """conf/label.yaml with ``argv``'s overrides; every mistake in them is one UserError line."""
    from hydra import compose
    from hydra.errors import HydraException

    from prefopt.run.config import check_keys_exist, conf_module, defaults_groups, group_choices, parse_overrides

    for a in argv:
        if a.startswith("-"):
            raise UserError(f"'{a}': prefopt-label takes key=value overrides only, e.g. judge=gold out=pairs.jsonl")
    overrides = parse_overrides(argv)
    for a, o in zip(argv, overrides):
        if o.is_sweep_override():
            raise UserError(f"'{a}': prefopt-label writes one file per run; accepted: a single value")
    # an unknown group option or a key that is not in the config: name what is accepted
    groups = defaults_groups("label")  # conf/label.yaml's config groups: model, data, judge
    check_keys_exist(overrides, group_choices(overrides, groups), config_name="label", groups=groups)
    try:
        with conf_module():
            return compose("label", overrides=list(argv))
    except HydraException as e:
        raise UserError(str(e).strip().splitlines()[0]) from None


def label(cfg, console=None) -> dict:
    """One labelling run from a composed conf/label.yaml; returns the summary."""
    import torch
    from omegaconf import OmegaConf
    from rich.console import Console

    from prefopt.core.config import ModelConfig, check_model, typed
    from prefopt.data.tokenize import tokenize_rows
    from prefopt.label import pairs as L
    from prefopt.rollout import judges as J
    from prefopt.rollout.sampler import HFSampler, SamplingConfig
    from prefopt.run.prepare import available_memory, base_policy, data_schema, prepare_data, quiet_libraries

    quiet_libraries()
    console = console or Console()
    t0 = time.perf_counter()
    # ---- configs: every mistake here, before anything loads ----
    own = {f.name: cfg[f.name] for f in dataclasses.fields(LabelConfig) if f.name in cfg}
    lc = typed(LabelConfig, OmegaConf.create(own), "label")
    for key, lo in (("num_prompts", 1), ("samples_per_prompt", 2), ("prompts_per_batch", 1)):
        if getattr(lc, key) < lo:
            why = " (a judge compares two completions of one prompt)" if key == "samples_per_prompt" else ""
            raise UserError(f"{key}={getattr(lc, key)}; accepted: >= {lo}{why}")
    if lc.pairs not in L.PAIRS:
        raise UserError(f"pairs={lc.pairs!r} is not known; accepted: {', '.join(L.PAIRS)}")
    if not math.isfinite(lc.temperature) or lc.temperature <= 0:
        raise UserError(f"temperature={lc.temperature}; accepted: a finite number > 0 (sampling temperature)")
    if lc.max_new_tokens is not None and lc.max_new_tokens < 1:
        raise UserError(f"max_new_tokens={lc.max_new_tokens}; accepted: >= 1, or null (the task's longest completion)")
    check_sample_budget(lc, available_memory())
    out = L.check_out(lc.out, lc.overwrite)
    mcfg = typed(ModelConfig, cfg.get("model"), "model")
    check_model(mcfg)
    data_name = cfg.data.get("name", "hf")
    dcfg = typed(data_schema(data_name), cfg.get("data"), "data")
    jcfg = J.judge_config(cfg.get("judge"))
    J.check(jcfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # ---- prompts, policy and tokenizer: what a training run on this data and model would start from ----
    if data_name != "hf":  # the testbed samples at least num_prompts training prompts
        dcfg = dataclasses.replace(dcfg, testbed=dataclasses.replace(
            dcfg.testbed, pair_prompts=max(dcfg.testbed.pair_prompts, lc.num_prompts)))
    data = prepare_data(mcfg, dcfg, "prompt_only", console=console)
    tok, source, gold_fn, task, policy_path = data.tokenizer, data.source, data.gold_fn, data.task, data.base_path
    rows = data.rows[: lc.num_prompts]
    examples, _ = tokenize_rows(rows, "prompt_only", tok, dcfg, source)
    judge = J.build_judge(jcfg, tokenizer=tok, gold_fn=gold_fn, device=device, console=console)
    policy = base_policy(mcfg, data, seed=lc.seed).eval().to(device)

    # ---- sample K completions per prompt ----
    K = lc.samples_per_prompt
    max_new = lc.max_new_tokens or (task.max_completion_tokens if task is not None else dcfg.max_length - dcfg.max_prompt_length)
    scfg = SamplingConfig(temperature=lc.temperature, max_new_tokens=max_new, samples_per_prompt=K,
                          prompts_per_batch=lc.prompts_per_batch)
    prompt_ids = [list(e["prompt_ids"]) for e in examples]
    t_sample = time.perf_counter()
    comps = HFSampler(tok.pad_token_id, tok.eos_token_id).generate(policy, prompt_ids, scfg, seed=lc.seed)
    t_sample = time.perf_counter() - t_sample
    del policy

    # ---- judge them: one batched call over every prompt's kept completions ----
    texts = [tok.decode(c, skip_special_tokens=True).strip() for c in comps]
    groups, flat_p, flat_t, flat_pid, flat_cid, sizes = [], [], [], [], [], []
    for n, e in enumerate(examples):
        keep = [n * K + j for j in L.distinct(texts[n * K : (n + 1) * K])]
        groups.append([texts[i] for i in keep])
        sizes.append(len(keep))
        flat_p += [e["prompt_text"]] * len(keep)
        flat_t += [texts[i] for i in keep]
        flat_pid += [prompt_ids[n]] * len(keep)
        flat_cid += [comps[i] for i in keep]
    t_judge = time.perf_counter()
    mats, bias = J.preference_matrices(judge, flat_p, flat_t, sizes, names=[f"row {e['row']}" for e in examples],
                                       prompt_ids=flat_pid, completion_ids=flat_cid)
    t_judge = time.perf_counter() - t_judge
    gold = None
    if gold_fn is not None:
        g = gold_fn(flat_p, flat_t)
        gold = [g[sum(sizes[:n]) : sum(sizes[: n + 1])] for n in range(len(sizes))]
    prompts = [rows[e["row"]]["prompt"] for e in examples]
    out_rows, counts = L.preference_rows(prompts, groups, mats, lc.pairs, gold)
    if not out_rows:
        raise UserError(f"no pairs: every prompt's completions were tied, empty or identical under judge={jcfg.name}; "
                        "nothing was written. Accepted: more prompts or samples_per_prompt")
    L.write_rows(out, out_rows, lc.overwrite, shown=lc.out)

    agreement, decided = L.gold_agreement(out_rows) if gold is not None else (None, 0)
    summary = {"out": out, "data": data_name, "judge": jcfg.name, "policy": policy_path or "model.arch",
               "prompts": len(examples), "samples_per_prompt": K, "pairs_mode": lc.pairs, "pairs": len(out_rows),
               **counts, "mean_confidence": sum(r["confidence"] for r in out_rows) / len(out_rows),
               "gold_agreement": agreement, "gold_agreement_pairs": decided,
               "gold_ties": len(out_rows) - decided if gold is not None else None,
               "order_disagreement": bias.get("order_disagreement"), "slot_a_preference": bias.get("slot_a_preference"),
               "sample_time_s": round(t_sample, 2), "judge_time_s": round(t_judge, 2),
               "wall_time_s": round(time.perf_counter() - t0, 2)}
    _print(summary, console)
    return summary


def _print(s: dict, console) -> None:
    lines = [f"[bold]prefopt-label[/] judge={s['judge']} data={s['data']} → {s['out']}",
             f"  {s['prompts']} prompts × {s['samples_per_prompt']} samples from {s['policy']}; {s['pairs']} pairs "
             f"({s['pairs_mode']}; {s['ties_dropped']} ties dropped, {s['prompts_without_pair']} prompts with < 2 "
             f"distinct completions); mean confidence {s['mean_confidence']:.3f}"]
    if s["gold_agreement"] is not None:
        lines.append(f"  agreement with the gold ordering: {s['gold_agreement']:.3f} over {s['gold_agreement_pairs']} "
                     f"pairs ({s['gold_ties']} gold ties excluded)")
    if s["order_disagreement"] is not None:
        lines.append(f"  position bias: the two orders disagree on {s['order_disagreement']:.3f} of pairs; slot A gets "
                     f"{s['slot_a_preference']:.3f} on average (0.5: none)")
    lines.append(f"  time: sampling {s['sample_time_s']:.1f}s, judging {s['judge_time_s']:.1f}s, total {s['wall_time_s']:.1f}s")
    console.print("\n".join(lines), soft_wrap=True)


def run(argv: list) -> dict:
    """One labelling run from command-line overrides; returns the summary (UserError propagates)."""
    return label(compose_label(argv))


# Bytes a sampled completion holds until it is written (its ids, text and judge inputs), per token, and a prompt's;
# an estimate on the high side, so that a count the machine cannot hold is refused before anything loads.
BYTES_PER_TOKEN, BYTES_PER_PROMPT = 256, 4096


def check_sample_budget(lc, available_bytes) -> None:
    """Refuse num_prompts × samples_per_prompt completions that would need more than half the memory available."""
    if available_bytes is None:
        return
    tokens = lc.max_new_tokens or 64
    need = lc.num_prompts * (BYTES_PER_PROMPT + lc.samples_per_prompt * tokens * BYTES_PER_TOKEN)
    if need > available_bytes / 2:
        most = int(available_bytes / 2 // (BYTES_PER_PROMPT + lc.samples_per_prompt * tokens * BYTES_PER_TOKEN))
        raise UserError(f"num_prompts={lc.num_prompts:,} with samples_per_prompt={lc.samples_per_prompt} would hold about "
                        f"{need / 2**30:,.1f} GiB of samples, more than half of the {available_bytes / 2**30:.1f} GiB "
                        f"available; accepted: num_prompts <= {most:,} (or fewer samples_per_prompt)")


def main(argv=None) -> None:
    """The console script: returns None on success, since ``sys.exit(main())`` treats anything else as
    a failure (a returned dict would be printed to stderr with exit status 1)."""
    from prefopt.run.signals import RunContext, stop_on_signals

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return None
    with stop_on_signals(RunContext()):
        try:
            run(argv)
        except UserError as e:
            print(f"prefopt-label: error: {e}", file=sys.stderr)
            sys.exit(2)
        except Interrupted as e:
            print(f"prefopt-label: interrupted by {e.signame}; nothing was written", file=sys.stderr)
            sys.exit(e.exit_code)
    return None


if __name__ == "__main__":
    main()
