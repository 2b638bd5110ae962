"""The trainer core: accumulation-split invariance, resume, NaN handling, checkpoints."""

import json
import os

import pytest
import torch

from conftest import synthetic_examples, tiny_model
from prefopt.core.config import TrainerConfig
from prefopt.data.tokenize import collate
from prefopt.models.load import make_reference
from prefopt.models.logprobs import Scorer
from prefopt.core.config import ModelConfig
from prefopt.objectives.dpo import DPO
from prefopt.objectives.registry import Objective
from prefopt.objectives.sft import SFT
from prefopt.core import checkpoint
from prefopt.core.errors import TrainingDiverged
from prefopt.core.rng import seed_everything
from prefopt.core.sources import OfflineSource
from prefopt.core.trainer import Trainer

from conftest import TINY


def make_trainer(kind, obj, out_dir, *, per_step=8, per_device=8, steps=3, seed=0, save_every=0, lr=1e-2):
    seed_everything(seed)
    policy = tiny_model(seed)
    ref = make_reference(policy, ModelConfig(arch=dict(TINY)), vocab_size=50, seed=seed) if obj.needs.reference else None
    ex = synthetic_examples(kind, n=24)
    cfg = TrainerConfig(max_steps=steps, examples_per_step=per_step, examples_per_device=per_device, lr=lr,
                        progress=False, log_every_steps=1, save_every_steps=save_every, warmup_steps=1, keep_checkpoints=5)
    src = OfflineSource(ex, lambda e: collate(e, kind, 0), per_step, per_device, seed=seed)
    return Trainer(objective=obj, policy=policy, source=src, scorer=Scorer(policy, ref), cfg=cfg, out_dir=str(out_dir),
                   total_steps=steps)


def params(t):
    return {n: p.detach().clone() for n, p in t.policy.named_parameters()}


@pytest.mark.parametrize("kind,obj", [("paired", DPO(DPO.Config(beta=0.5))), ("demonstrations", SFT(SFT.Config()))])
def test_accumulation_split_does_not_change_loss_or_update(tmp_path, kind, obj):
    results = []
    for per_device in (8, 4, 2, 1):
        t = make_trainer(kind, obj, tmp_path / f"d{per_device}", per_device=per_device)
        losses = [t.train_step()["loss"] for _ in range(2)]
        results.append((losses, params(t)))
    (l0, p0) = results[0]
    for losses, p in results[1:]:
        assert losses == pytest.approx(l0, rel=1e-5, abs=1e-6)
        for n in p0:
            torch.testing.assert_close(p[n], p0[n], rtol=1e-4, atol=1e-6)


def test_token_mean_is_over_the_step_not_per_microbatch(tmp_path):
    # SFT: the loss of a step is Σ token NLL / Σ tokens, whatever the micro-batches hold.
    t = make_trainer("demonstrations", SFT(SFT.Config()), tmp_path, per_device=2)
    micro = t.source.step_batches(0)
    tot, n = 0.0, 0
    with torch.no_grad():
        for b in micro:
            s, _ = t.objective.loss(b, t.scorer)
            tot += float(s)
            n += t.objective.units(b)
    row = t.train_step()
    assert row["loss"] == pytest.approx(tot / n, rel=1e-6)


def _metrics(path):
    rows = [json.loads(l) for l in open(path)]
    return [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k} for r in rows]


def test_resume_matches_uninterrupted_run(tmp_path):
    obj = DPO(DPO.Config(beta=0.5))
    full = make_trainer("paired", obj, tmp_path / "full", steps=6, per_device=4)
    full.fit()
    # Interrupted: checkpoint at step 3, one more (lost) step, then a fresh process resumes.
    a = make_trainer("paired", obj, tmp_path / "resumed", steps=6, per_device=4, save_every=3)
    for _ in range(4):
        row = a.train_step()
        a.log(row)
        if a.state.step == 3:
            a.save_checkpoint()
    b = make_trainer("paired", obj, tmp_path / "resumed", steps=6, per_device=4, save_every=3, seed=0)
    ckpt = checkpoint.newest(str(tmp_path / "resumed"))
    assert ckpt.endswith("step_0000003")
    b.load_checkpoint(ckpt)
    b.fit()
    pf, pb = params(full), params(b)
    for n in pf:
        assert torch.equal(pf[n], pb[n]), n
    assert _metrics(tmp_path / "resumed" / "metrics.jsonl") == _metrics(tmp_path / "full" / "metrics.jsonl")


class NaNAfter(Objective):
    """Wraps an objective and returns NaN from step `at` on."""

    def __init__(self, inner, at):
        self.inner, self.at, self.calls = inner, at, 0
        self.needs = inner.needs

    def units(self, b):
        return self.inner.units(b)

    def loss(self, b, s):
        self.calls += 1
        loss, m = self.inner.loss(b, s)
        return (loss * float("nan") if self.calls > self.at else loss), m


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    t = make_trainer("demonstrations", NaNAfter(SFT(SFT.Config()), at=2), tmp_path, steps=5, save_every=1)
    with pytest.raises(TrainingDiverged, match="step 3.*step_0000002"):
        t.fit()
    ckpt = checkpoint.newest(str(tmp_path))
    assert ckpt.endswith("step_0000002")
    state = torch.load(os.path.join(ckpt, "trainable.pt"))
    assert all(torch.isfinite(v).all() for v in state.values())
    assert not [d for d in os.listdir(tmp_path / "checkpoints") if d.startswith(".tmp")]
