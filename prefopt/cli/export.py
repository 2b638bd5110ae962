"""``prefopt-export``: a finished run's policy as a GGUF file for llama.cpp (same as
``python -m prefopt.cli.export``).

    prefopt-export RUN out=FILE.gguf [type=f16|bf16|q8_0|f32] [lora=merge|separate] [overwrite=false]

RUN is a run directory (the run-output contract: ``model/`` holds the final policy, the full
model or the LoRA adapter, plus the tokenizer; ``.hydra/config.yaml`` the composed config).

- ``type``: f16 (default: llama.cpp then gives the trained model's answers), q8_0 (about half of
  f16's size; 8-bit weights, whose error llama.cpp's quantized kernels add to), f32 (exact).
- ``lora=merge`` (default): the adapter merged into the base, one file. ``lora=separate``: the base
  alone in FILE.gguf and the adapter as a llama.cpp GGUF LoRA in FILE.lora.gguf (``llama-cli -m
  FILE.gguf --lora FILE.lora.gguf``); a run without LoRA has no adapter to separate.
- The tokenizer and chat template are copied from the GGUF file the run's base was read from
  (``model=smollm2``, ``model.name_or_path=FILE.gguf``) when it is still there, and built from
  ``model/``'s tokenizer otherwise (:mod:`prefopt.models.gguf_write` says how).

A LoRA run's base is read from where the adapter says (``adapter_config.json``'s
``base_model_name_or_path``: the testbed's cached policy or the GGUF cache entry), in float32. An
existing out file is kept unless ``overwrite=true``. Bad input is one line and exit status 2.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional

from prefopt.core.errors import UserError, first_line

KEYS = {"out": None, "type": "f16", "lora": "merge", "overwrite": "false"}
LORA_MODES = ("merge", "separate")
USAGE = "prefopt-export RUN out=FILE.gguf [type=f16|bf16|q8_0|f32] [lora=merge|separate] [overwrite=true]"


def parse(argv: list) -> tuple:
    """(run directory, options) from the command line; every mistake is one UserError line."""
    from prefopt.models.gguf_write import FTYPES

    runs, opts = [], dict(KEYS)
    for a in argv:
        if "=" in a:
            key, value = a.split("=", 1)
            if key not in KEYS:
                raise UserError(f"'{a}': unknown option {key}; accepted: {', '.join(KEYS)} (usage: {USAGE})")
            opts[key] = value
        elif a.startswith("-"):
            raise UserError(f"'{a}' is not an option; usage: {USAGE}")
        else:
            runs.append(a)
    if len(runs) != 1:
        raise UserError(f"{'no run directory' if not runs else f'{len(runs)} run directories'} given; usage: {USAGE}")
    if not opts["out"]:
        raise UserError(f"out=FILE.gguf is required; usage: {USAGE}")
    if not opts["out"].endswith(".gguf"):
        raise UserError(f"out={opts['out']}: accepted: a file name ending in .gguf")
    if opts["type"] not in FTYPES:
        raise UserError(f"type={opts['type']} is not known; accepted: {', '.join(FTYPES)}")
    if opts["lora"] not in LORA_MODES:
        raise UserError(f"lora={opts['lora']} is not known; accepted: {', '.join(LORA_MODES)}")
    if opts["overwrite"] not in ("true", "false"):
        raise UserError(f"overwrite={opts['overwrite']}; accepted: true or false")
    return runs[0], opts


def lora_path(out: str) -> str:
    """FILE.gguf -> FILE.lora.gguf, where lora=separate writes the adapter."""
    return out[: -len(".gguf")] + ".lora.gguf"


def check_run(run: str) -> str:
    """``run``'s model/ folder, after checking it holds a model or an adapter."""
    if not os.path.isdir(run):
        raise UserError(f"RUN '{run}' does not exist; accepted: a finished run directory (with model/ and "
                        ".hydra/config.yaml)")
    model_dir = os.path.join(run, "model")
    if not os.path.isdir(model_dir):
        raise UserError(f"RUN '{run}' has no model/ (unfinished, or trained with trainer.save_model=false); accepted: "
                        "a finished run directory whose model/ holds the final policy")
    if not any(os.path.isfile(os.path.join(model_dir, f)) for f in ("config.json", "adapter_config.json")):
        raise UserError(f"{model_dir} holds neither config.json (a full model) nor adapter_config.json (a LoRA "
                        "adapter); accepted: the model/ a finished prefopt run writes")
    return model_dir


def adapter_base(model_dir: str) -> Optional[str]:
    """The base checkpoint a LoRA run's adapter names, or None for a full model."""
    path = os.path.join(model_dir, "adapter_config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            base = json.load(f).get("base_model_name_or_path")
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({first_line(e)}); accepted: the adapter_config.json "
                        "peft writes") from None
    if not base or not os.path.isdir(base):
        raise UserError(f"{path}: the adapter's base model '{base}' is not there any more (a cleared PREFOPT_CACHE?); "
                        "accepted: a run whose base checkpoint still exists (rerun the same model=... once to rebuild "
                        "the cache)")
    return base


def source_gguf(run: str, base: Optional[str]) -> Optional[str]:
    """The GGUF file the run's base was read from, where a copy still exists: the file the run's
    config names, else the one the GGUF cache entry recorded. A LoRA run's base is that cache entry,
    keyed by the file's sha256, so a candidate counts only when its sha256 is the entry's."""
    from prefopt.core import files
    from prefopt.models import gguf

    candidates, digest = [], None
    config = os.path.join(run, ".hydra", "config.yaml")
    if os.path.isfile(config):
        from omegaconf import OmegaConf

        from prefopt.core.config import ModelConfig, typed

        try:
            candidates.append(gguf.source_file(typed(ModelConfig, OmegaConf.load(config).get("model"), "model")))
        except (UserError, ValueError, OSError):
            pass  # a moved or renamed file: the cache entry's record, or model/'s tokenizer, instead
    marker = os.path.join(base, gguf.MARKER) if base is not None else None
    if marker is not None and os.path.isfile(marker):
        try:
            with open(marker, encoding="utf-8") as f:
                record = json.load(f)
            candidates.append(record.get("file"))
            digest = record.get("sha256")
        except (OSError, ValueError, AttributeError):
            pass
    for path in candidates:
        if path and os.path.isfile(path) and (digest is None or files.sha256_file(path) == digest):
            return path
    return None


def export(argv: list, stream=None) -> dict:
    """One export from command-line arguments; returns what was written."""
    run, opts = parse(argv)
    model_dir = check_run(run)
    out = os.path.abspath(opts["out"])
    separate = opts["lora"] == "separate"
    targets = [out] + ([lora_path(out)] if separate else [])
    if opts["overwrite"] != "true":
        for t in targets:
            if os.path.exists(t):
                raise UserError(f"{t} exists; nothing was written; accepted: a new file name, or overwrite=true")
    base = adapter_base(model_dir)
    if separate and base is None:
        raise UserError(f"lora=separate: {model_dir} holds a full model, not a LoRA adapter; accepted: lora=merge "
                        "for this run")

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from prefopt.models import gguf_write
    from prefopt.run.prepare import quiet_libraries

    quiet_libraries()
    t0 = time.perf_counter()
    try:
        config = AutoConfig.from_pretrained(base or model_dir)
    except (OSError, ValueError) as e:
        raise UserError(f"{base or model_dir}: unreadable config.json ({first_line(e)}); accepted: the model/ a "
                        "finished prefopt run writes") from None
    gguf_write.check_config(config)  # refused before any weights load
    source = source_gguf(run, base)
    try:
        tok = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise UserError(f"{model_dir}: no loadable tokenizer ({first_line(e)}); accepted: the model/ a finished "
                        "prefopt run writes (it saves the tokenizer beside the model)") from None
    try:
        if base is not None:
            from peft import PeftModel

            base_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
            model = PeftModel.from_pretrained(base_model, model_dir)
        else:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise UserError(f"{model_dir}: cannot load the policy ({first_line(e)}); accepted: the model/ a finished "
                        "prefopt run writes") from None
    model.eval()
    written = [gguf_write.write_model(model, tok, out, opts["type"], source_gguf=source, merge_lora=not separate,
                                      name=os.path.basename(os.path.abspath(run)))]
    if separate:
        written.append(gguf_write.write_lora(model, lora_path(out)))
    summary = {"run": run, "out": written, "type": opts["type"], "lora": opts["lora"] if base else None,
               "tokenizer": source or f"{model_dir} (HF tokenizer)", "wall_time_s": round(time.perf_counter() - t0, 2)}
    _print(summary, stream)
    return summary


def _print(s: dict, stream) -> None:
    lines = [f"prefopt-export {s['run']} → {s['out'][0]} ({s['type']}, {os.path.getsize(s['out'][0]) / 2**20:.1f} MiB"
             + (", LoRA merged" if s["lora"] == "merge" else "") + ")"]
    if len(s["out"]) > 1:
        lines.append(f"  adapter → {s['out'][1]} ({os.path.getsize(s['out'][1]) / 2**20:.1f} MiB; llama.cpp: "
                     f"-m {os.path.basename(s['out'][0])} --lora {os.path.basename(s['out'][1])})")
    lines.append(f"  tokenizer and chat template from {s['tokenizer']}; {s['wall_time_s']:.1f}s")
    print("\n".join(lines), file=stream or sys.stdout, flush=True)


def main(argv=None) -> None:
    """The console script (None on success; a user error is one line on stderr and exit status 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return None
    try:
        export(argv)
    except UserError as e:
        print(f"prefopt-export: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("prefopt-export: interrupted; no partial file was left", file=sys.stderr)
        sys.exit(130)
    return None


if __name__ == "__main__":
    main()
