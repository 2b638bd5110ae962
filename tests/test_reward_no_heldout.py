"""A reward model trained with no held-out split (algo.eval_fraction=0): there is nothing to
score it on, and it cannot generate, so the run trains, saves model/ and writes its summary with no
evaluation (issue 36), on the testbed's pairs and on ranked rows."""

import json
import os

from conftest import FAST, compose
from prefopt.run import train as run
from test_ranked import ranked_row

SHORT = [*FAST, "algo=reward", "algo.eval_fraction=0", "trainer.max_steps=2", "trainer.examples_per_step=8",
         "trainer.warmup_steps=0"]


def _check(s, out):
    assert s["steps"] == 2
    assert os.path.exists(os.path.join(out, "model", "config.json"))
    assert os.path.exists(os.path.join(out, "summary.json"))
    assert s["eval"] is None or not s["eval"]


def test_reward_model_without_heldout_pairs_on_the_testbed(tmp_path):
    out = str(tmp_path / "run")
    _check(run(compose([*SHORT, "data=reviews", "data.testbed.pair_prompts=64"]), out), out)


def test_reward_model_without_heldout_pairs_on_ranked_rows(tmp_path):
    f = tmp_path / "ranked.jsonl"
    f.write_text("".join(json.dumps({**ranked_row(K=3), "prompt": f"the movie was {i}"}) + "\n" for i in range(12)))
    out = str(tmp_path / "run")
    _check(run(compose([*SHORT, "data=hf", f"data.path={f}"]), out), out)
