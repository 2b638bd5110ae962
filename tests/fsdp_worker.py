"""Run by tests/test_fsdp.py under ``torchrun --nproc_per_node 2`` (gloo): several prefopt runs in
one launch (a launch costs more than a tiny run), each written under OUT/NAME, plus a report
(OUT/report.json, rank 0) of what only the live sharded processes can observe.

    torchrun --nproc_per_node 2 tests/fsdp_worker.py OUT DATA_DIR
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

import prefopt.run.stages as T  # noqa: E402
from conftest import TINY, compose  # noqa: E402

SCENARIOS_OFFLINE = {
    # name: (overrides beyond common, strategy)
    "dpo_full": ([], "fsdp2"),
    "dpo_full_ddp": ([], "ddp"),
    "dpo_lora": (["model.lora.r=4"], "fsdp2"),
    "sft": (["algo=sft", "data.path={data}/demos.jsonl"], "fsdp2"),
    "reward": (["algo=reward", "algo.eval_fraction=0"], "fsdp2"),
}
ONLINE = ["data=reviews", "trainer.max_steps=1", "trainer.examples_per_step=8", "trainer.examples_per_device=2", "algo.prompts_per_step=4", "algo.samples_per_prompt=2",
          "algo.max_new_tokens=6", "algo.sequences_per_device=4", "trainer.lr=1e-2"]
SCENARIOS_ONLINE = {
    "grpo": (["algo=grpo"], "fsdp2"),
    "grpo_ddp": (["algo=grpo"], "ddp"),
    "ppo": (["algo=ppo"], "fsdp2"),
    "ppo_ddp": (["algo=ppo"], "ddp"),
}


def arch_override():
    keys = ", ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in TINY.items()
                     if k != "max_position_embeddings")
    return f"model.arch={{{keys}}}"


def offline_common(data):
    return ["data=hf", f"data.path={data}/pairs.jsonl", arch_override(), "trainer.max_steps=3",
            "trainer.examples_per_step=8", "trainer.examples_per_device=2", "trainer.lr=1e-2",
            "trainer.eval_at_end=false", "trainer.progress=false", "trainer.log_every_steps=1"]


def overrides_for(name, data, strategy=None):
    """The overrides of scenario ``name`` (the test runs the same ones in one process)."""
    if name in SCENARIOS_OFFLINE:
        extra, strat = SCENARIOS_OFFLINE[name]
        base = offline_common(data)
    else:
        extra, strat = SCENARIOS_ONLINE[name]
        base = [arch_override(), *ONLINE, "trainer.eval_at_end=false", "trainer.progress=false", "trainer.log_every_steps=1"]
    return [*base, *[e.format(data=data) for e in extra], f"trainer.strategy={strategy or strat}"]


class _Captured:
    place = policy = None


def _capture():
    """Keep the placed policy of the next run (prefopt.run.stages._place_models is where it is sharded)."""
    orig = T._place_models

    def wrapped(place, policy, reference):
        orig(place, policy, reference)
        _Captured.place, _Captured.policy = place, policy

    T._place_models = wrapped


def probe_batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 40, (3, 9), generator=g)
    am = torch.ones_like(ids)
    lm = torch.zeros_like(ids, dtype=torch.bool)
    lm[:, 4:] = True
    return ids, am, lm


def main():
    out, data = sys.argv[1], sys.argv[2]
    _capture()
    from prefopt.models.logprobs import token_stats

    report = {}
    only = os.environ.get("FSDP_WORKER_ONLY")  # debugging: a comma-separated subset of the scenarios
    for name in [*SCENARIOS_OFFLINE, *SCENARIOS_ONLINE]:
        if only and name not in only.split(","):
            continue
        cfg = compose(overrides_for(name, data))
        T.run_one(cfg, os.path.join(out, name))
        place, policy = _Captured.place, _Captured.policy
        if name in ("dpo_full", "dpo_lora"):
            # What this rank holds of each sharded parameter, and the trained model's log-probs
            # (against which the consolidated model/ is checked).
            from torch.distributed.tensor import DTensor

            params = [(n, p) for n, p in policy.named_parameters()]
            frac = [p.to_local().numel() / p.numel() for _, p in params if isinstance(p, DTensor)]
            ids, am, lm = probe_batch()
            with torch.no_grad():
                lp = place.call(policy, token_stats, policy, ids, am, lm).logps
            report[name] = {"n_params": len(params), "n_dtensor": len(frac), "local_fraction": frac,
                            "logps": lp.tolist()}
    # Kill and resume: an uninterrupted 4-step run against one stopped after step 3 (its newest
    # checkpoint: step 2) and resumed with trainer.resume=auto.
    common = overrides_for("dpo_full", data) + ["trainer.max_steps=4", "trainer.save_every_steps=2"]
    T.run_one(compose(common), os.path.join(out, "resume_ref"))
    from prefopt.core.trainer import Trainer

    orig_step = Trainer.train_step

    def dying_step(self):
        if self.state.step == 3:
            raise SystemExit("simulated crash")  # every rank, after step 3 is done but not checkpointed
        return orig_step(self)

    Trainer.train_step = dying_step
    try:
        T.run_one(compose(common), os.path.join(out, "resumed"))
    except SystemExit:
        pass
    Trainer.train_step = orig_step
    ckpts = sorted(os.listdir(os.path.join(out, "resumed", "checkpoints")))
    T.run_one(compose([*common, "trainer.resume=auto"]), os.path.join(out, "resumed"))
    report["resume"] = {"checkpoints_at_crash": ckpts}
    # Decoding a gathered sharded policy gives the tokens of the same policy unsharded.
    from conftest import tiny_model
    from prefopt.rollout.sampler import HFSampler, SamplingConfig

    place = _Captured.place
    plain, sharded = tiny_model(seed=3), place.trainable(tiny_model(seed=3))
    cfg = SamplingConfig(max_new_tokens=8, samples_per_prompt=3, temperature=1.0)
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    want = HFSampler(0, 2).sample(plain, prompts, cfg, seed=11, return_logprobs=True)
    with place.gathered(sharded):
        got = HFSampler(0, 2).sample(sharded, prompts, cfg, seed=11, return_logprobs=True)
    report["decode"] = {"same_tokens": got.completions == want.completions,
                        "max_logprob_diff": max(abs(a - b) for x, y in zip(got.logprobs, want.logprobs) for a, b in zip(x, y))}
    if place.is_main:
        with open(os.path.join(out, "report.json"), "w") as f:
            json.dump(report, f)
    place.barrier()


if __name__ == "__main__":
    main()
