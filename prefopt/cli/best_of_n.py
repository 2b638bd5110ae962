"""Best-of-N at inference: ``python -m prefopt.cli.best_of_n [n=1,4,16] [out=FILE.json] OVERRIDES...``

Samples max(n) completions of each held-out prompt from the policy (``model=...``, or a trained
run's ``model.name_or_path=DIR/model``), picks the one the reward (``reward=...``, as for
training) ranks highest among the first n, and reports its gold reward (testbed data) and proxy
reward, with the analytic KL log n − (n−1)/n. Same Hydra overrides as ``prefopt-train``.
"""

from __future__ import annotations

import json
import sys

from prefopt.core.errors import UserError


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
    from hydra import compose, initialize_config_module
    from rich.console import Console
    from rich.table import Table

    from prefopt.core.config import EvalConfig, ModelConfig, typed
    from prefopt.rollout.evaluate import chat_prompt_ids
    from prefopt.models.load import load_policy
    from prefopt.objectives.rejection_sampling import best_of_n
    from prefopt.rollout.rewards import RewardConfig, build_reward
    from prefopt.testbed import world as W
    from prefopt.cli.stages import data_schema, quiet_libraries

    quiet_libraries()
    with initialize_config_module(config_module="prefopt.conf", version_base=None):
        cfg = compose("train", overrides=rest)
    data_name = cfg.data.get("name", "hf")
    if data_name == "hf":
        raise UserError("best-of-n needs held-out prompts with a gold reward: data=reviews or data=arith")
    dcfg = typed(data_schema(data_name), cfg.data, "data")
    mcfg = typed(ModelConfig, cfg.model, "model")
    ecfg = typed(EvalConfig, cfg.get("eval"), "eval")
    world = W.build_world(dcfg.testbed, "prompt_only")
    tok = world.tokenizer
    rcfg = typed(RewardConfig, cfg.get("reward"), "reward")
    reward = build_reward(rcfg, tokenizer=tok, gold_fn=world.task.gold_reward, task=dcfg.testbed.task)
    policy = load_policy(mcfg, path=mcfg.name_or_path or world.policy_path, vocab_size=len(tok), seed=int(cfg.seed))
    prompts = world.eval_prompts[: ecfg.num_prompts]
    res = best_of_n(policy, tok, prompts, [chat_prompt_ids(tok, p) for p in prompts], reward, ns, gold_fn=world.task.gold_reward,
                    temperature=ecfg.temperature, max_new_tokens=ecfg.max_new_tokens, seed=int(cfg.seed))
    t = Table(title=f"best-of-n on {dcfg.testbed.task} ({len(prompts)} held-out prompts; reward {rcfg.name})")
    for c in ("n", "gold reward", "proxy reward", "KL (analytic)"):
        t.add_column(c, justify="right")
    for n, r in res.items():
        t.add_row(str(n), f"{r['gold_reward']:.3f}", f"{r['proxy_reward']:.3f}", f"{r['kl_analytic']:.3f}")
    Console().print(t)
    if out:
        with open(out, "w") as f:
            json.dump({str(k): v for k, v in res.items()}, f, indent=2)
    return res


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"best-of-n: error: {e}", file=sys.stderr)
        sys.exit(2)
