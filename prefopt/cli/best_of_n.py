"""Best-of-N at inference: ``python -m prefopt.cli.best_of_n [n=1,4,16] [out=FILE.json] OVERRIDES...``

Samples max(n) completions of each held-out prompt from the policy (``model=...``, or a trained
run's ``model.name_or_path=DIR/model``), picks the one the reward (``reward=...``, as for
training) ranks highest among the first n, and reports its gold reward (testbed data) and proxy
reward, with the analytic KL log n − (n−1)/n. Same Hydra overrides as ``prefopt-train``.
"""

from __future__ import annotations

import sys

from prefopt.core.errors import UserError
from prefopt.core.files import write_json


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    ns, out = (1, 2, 4, 8, 16), None
    rest = []
    for a in argv:
        if a.startswith("n="):
            try:
                ns = tuple(int(x) for x in a[2:].strip("[]").split(","))
            except ValueError:
                raise UserError(f"n='{a[2:]}': expected comma-separated integers, e.g. n=1,4,16") from None
        elif a.startswith("out="):
            out = a[4:]
        else:
            rest.append(a)
    from rich.console import Console
    from rich.table import Table

    from prefopt.core.config import EvalConfig, typed
    from prefopt.objectives.rejection_sampling import best_of_n
    from prefopt.rollout.evaluate import chat_prompt_ids
    from prefopt.rollout.rewards import build_reward, reward_config
    from prefopt.run.api import Run
    from prefopt.run.prepare import quiet_libraries

    quiet_libraries()
    run = Run(rest)
    if run.cfg.data.get("name", "hf") == "hf":
        raise UserError("best-of-n needs held-out prompts with a gold reward: data=reviews or data=arith")
    ecfg = typed(EvalConfig, run.cfg.get("eval"), "eval")
    data = run.data("prompt_only")  # the prompts, tokenizer and policy a run of these overrides starts from
    tok, task = data.tokenizer, data.task
    rcfg = reward_config(run.cfg.get("reward"))
    reward = build_reward(rcfg, tokenizer=tok, gold_fn=data.gold_fn, task=task.name)
    policy = run.policy(data)
    prompts = data.heldout["test"][: ecfg.num_prompts]
    res = best_of_n(policy, tok, prompts, [chat_prompt_ids(tok, p) for p in prompts], reward, ns, gold_fn=data.gold_fn,
                    temperature=ecfg.temperature, max_new_tokens=ecfg.max_new_tokens, seed=int(run.cfg.seed))
    t = Table(title=f"best-of-n on {task.name} ({len(prompts)} held-out prompts; reward {rcfg.name})")
    for c in ("n", "gold reward", "proxy reward", "KL (analytic)"):
        t.add_column(c, justify="right")
    for n, r in res.items():
        t.add_row(str(n), f"{r['gold_reward']:.3f}", f"{r['proxy_reward']:.3f}", f"{r['kl_analytic']:.3f}")
    Console().print(t)
    if out:
        write_json(out, {str(k): v for k, v in res.items()}, indent=2)
    return res


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"best-of-n: error: {e}", file=sys.stderr)
        sys.exit(2)
