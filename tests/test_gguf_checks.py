"""GGUF files and their cache on bad input: a file that lacks a tensor or holds one of the wrong
shape, a chat template that exceeds its bounds, a damaged, read-only or full cache, half-built
entries of dead processes and package names that do not resolve. Each is one line (or a rebuild
with one line), and nothing wrong is cached."""

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from gguf_files import write_gguf
from test_gguf import tiny  # noqa: F401  (the tiny GGUF fixture, shared)

from prefopt.core.config import ModelConfig
from prefopt.core.errors import UserError
from prefopt.models import gguf, gguf_template




@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("PREFOPT_CACHE", str(root))
    return root


def _entries(cache) -> list:
    folder = cache / "gguf"
    return sorted(n for n in os.listdir(folder) if not n.endswith(".lock")) if folder.is_dir() else []


def test_a_gguf_that_lacks_a_tensor_is_refused_and_nothing_is_cached(tiny, tmp_path, cache):
    path = str(tmp_path / "lacking.gguf")
    write_gguf(path, tiny[1], tiny[2], drop=("blk.1.ffn_down.weight",))
    with pytest.raises(UserError) as e:
        gguf.checkpoint_dir(ModelConfig(name_or_path=path))
    msg = str(e.value)
    assert "\n" not in msg and path in msg and "lacks 1 tensor" in msg and "blk.1.ffn_down.weight" in msg
    assert _entries(cache) == []


def test_a_gguf_tensor_whose_shape_disagrees_with_its_metadata_is_refused_naming_both_shapes(tiny, tmp_path, cache):
    path = str(tmp_path / "misshapen.gguf")
    write_gguf(path, tiny[1], tiny[2], replace={"blk.0.attn_q.weight": np.zeros((24, 32), np.float32)})
    with pytest.raises(UserError) as e:
        gguf.checkpoint_dir(ModelConfig(name_or_path=path))
    msg = str(e.value)
    assert "\n" not in msg and path in msg and "blk.0.attn_q.weight" in msg
    assert "[24, 32]" in msg and "[32, 32]" in msg and "ignore_mismatched_sizes" not in msg
    assert _entries(cache) == []


def test_the_cache_has_a_manifest_and_a_truncated_entry_is_rebuilt_once_with_one_line(tiny, cache, capsys):
    cfg = ModelConfig(name_or_path=tiny[0])
    out = gguf.checkpoint_dir(cfg)
    manifest = json.load(open(os.path.join(out, "manifest.json")))["files"]
    weights = os.path.join(out, "model.safetensors")
    assert manifest["model.safetensors"]["size"] == os.path.getsize(weights)
    assert len(manifest["model.safetensors"]["sha256"]) == 64 and "gguf_source.json" not in manifest
    assert gguf.damaged(out, hashes=True) is None
    good = open(weights, "rb").read()
    capsys.readouterr()
    with open(weights, "r+b") as f:
        f.truncate(100)
    assert "model.safetensors is 100 bytes" in gguf.damaged(out)
    assert gguf.checkpoint_dir(cfg) == out
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(err) == 1 and "damaged" in err[0] and "model.safetensors is 100 bytes" in err[0] and "rebuilding" in err[0]
    assert open(weights, "rb").read() == good and gguf.damaged(out) is None
    # An entry from before the manifest existed is rebuilt too, and a sound one is left alone.
    os.unlink(os.path.join(out, "manifest.json"))
    assert "no manifest.json" in gguf.damaged(out)
    gguf.checkpoint_dir(cfg)
    mtime = os.path.getmtime(os.path.join(out, "manifest.json"))
    capsys.readouterr()
    assert gguf.checkpoint_dir(cfg) == out and os.path.getmtime(os.path.join(out, "manifest.json")) == mtime
    assert capsys.readouterr().err == ""


class _ReadOnlyLock:
    def __init__(self, path, *a, **kw):
        self.path = path

    def acquire(self, *a, **kw):
        raise OSError(errno.EROFS, "Read-only file system", self.path)

    def release(self):
        pass


def test_a_read_only_cache_is_used_when_complete_else_refused_naming_PREFOPT_CACHE(tiny, cache, monkeypatch):
    cfg = ModelConfig(name_or_path=tiny[0])
    out = gguf.checkpoint_dir(cfg)
    monkeypatch.setattr(gguf, "FileLock", _ReadOnlyLock)
    assert gguf.checkpoint_dir(cfg) == out  # complete: nothing to write
    with open(os.path.join(out, "model.safetensors"), "r+b") as f:
        f.truncate(10)
    with pytest.raises(UserError) as e:
        gguf.checkpoint_dir(cfg)
    msg = str(e.value)
    assert "\n" not in msg and f"PREFOPT_CACHE={cache}" in msg and "cannot be written" in msg and "damaged" in msg
    monkeypatch.setenv("PREFOPT_CACHE", str(cache) + "-empty")
    with pytest.raises(UserError, match=r"PREFOPT_CACHE=.*-empty cannot be written .* has no entry for it"):
        gguf.checkpoint_dir(cfg)


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                                                "message: \"No space left on device\" })")])
def test_a_full_disk_is_one_line_and_leaves_nothing(tiny, cache, monkeypatch, error):
    def fill(path, digest, out):
        os.makedirs(out)
        open(os.path.join(out, "model.safetensors"), "wb").write(b"x" * 1000)
        raise error

    monkeypatch.setattr(gguf, "_dequantize", fill)
    with pytest.raises(UserError) as e:
        gguf.checkpoint_dir(ModelConfig(name_or_path=tiny[0]))
    msg = str(e.value)
    assert "\n" not in msg and f"PREFOPT_CACHE={cache}" in msg and "no space left" in msg
    assert _entries(cache) == []


def test_half_built_entries_of_dead_processes_are_removed_at_the_next_start(tiny, cache):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    folder = cache / "gguf"
    stale = [folder / f".tmp-0123456789abcdef-v1-{pid}-0123456789ab", folder / f"0123456789abcdef-v1.tmp-{pid}"]
    live = folder / f".tmp-0123456789abcdef-v1-{os.getpid()}-0123456789ab"
    for d in (*stale, live):
        os.makedirs(d)
        (d / "model.safetensors").write_bytes(b"x" * 100)
    out = gguf.checkpoint_dir(ModelConfig(name_or_path=tiny[0]))
    assert not any(d.exists() for d in stale) and live.is_dir() and os.path.isdir(out)


BOMBS = {
    "'x' * 10**9": "{{ 'x' * 10**9 }}",
    "a huge range": "{% for i in range(10**9) %}{{ i }}{% endfor %}",
    "include": "{% include 'other.jinja' %}",
    "a wide pad": "{{ 'x'.center(10**9) }}",
    "doubling": "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
    "deep recursion": "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_a_chat_template_past_its_bounds_is_refused(name):
    assert gguf_template.problem({"tokenizer.chat_template": BOMBS[name]}, {"eos_token": "</s>"}) is not None


def test_ordinary_chat_templates_pass_the_bounds(tiny):
    templates = {"chatml": tiny[2].chat_template, "generation": "{% for m in messages %}{% generation %}"
                 "{{ m['content'] | tojson }}{% endgeneration %}{% endfor %}",
                 "no system": "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}"
                              "{% endif %}{{ bos_token }}{{ messages[-1]['content'] }}"}
    assert gguf_template.problem(templates, {"bos_token": "<s>"}) is None


def test_a_gguf_with_a_bomb_chat_template_is_one_line_and_nothing_is_cached(tiny, tmp_path, cache):
    path = str(tmp_path / "bomb.gguf")
    write_gguf(path, tiny[1], tiny[2], chat_template=BOMBS["'x' * 10**9"])
    with pytest.raises(UserError) as e:
        gguf.checkpoint_dir(ModelConfig(name_or_path=path))
    msg = str(e.value)
    assert "\n" not in msg and path in msg and "chat template" in msg and "1000000000" in msg
    assert _entries(cache) == []


def test_gguf_package_names_resolve_without_importing_anything(tiny, tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    for pkg in ("pfx_gguf_pkg", "pfx_gguf_pkg/models"):
        os.makedirs(tmp_path / "site" / pkg)
        (tmp_path / "site" / pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'a').write('{pkg}\\n')\n")
    (tmp_path / "site" / "pfx_gguf_pkg" / "models" / "tiny.gguf").write_bytes(open(tiny[0], "rb").read())
    (tmp_path / "site" / "pfx_gguf_pkg" / "plain.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    found = gguf.source_file(ModelConfig(gguf_package="pfx_gguf_pkg.models", gguf_file="tiny.gguf"))
    assert found == str(tmp_path / "site" / "pfx_gguf_pkg" / "models" / "tiny.gguf")
    cases = {"no_such_pkg.sub": "no_such_pkg.sub is not installed",
             "..x": "..x is not a package name", "a..b": "a..b is not a package name",
             "pfx_gguf_pkg.nosub": "package pfx_gguf_pkg has no subpackage nosub",
             "pfx_gguf_pkg.plain": "pfx_gguf_pkg.plain is a module, not a package folder"}
    for name, needle in cases.items():
        with pytest.raises(UserError) as e:
            gguf.source_file(ModelConfig(gguf_package=name, gguf_file="tiny.gguf"))
        assert "\n" not in str(e.value) and f"model.gguf_package={name}" in str(e.value) and needle in str(e.value)
    assert not marker.exists() and "pfx_gguf_pkg" not in sys.modules


def test_verify_reads_every_byte_of_the_cache_and_names_a_changed_file(tiny, cache):
    out = gguf.checkpoint_dir(ModelConfig(name_or_path=tiny[0]))
    assert gguf.verify_cache() == []
    weights = os.path.join(out, "model.safetensors")
    data = bytearray(open(weights, "rb").read())
    data[-1] ^= 0xFF
    open(weights, "wb").write(bytes(data))
    assert gguf.damaged(out) is None  # loads compare sizes only
    assert gguf.verify_cache() == [(out, "model.safetensors has changed: its sha256 differs from its manifest's")]
    p = subprocess.run([sys.executable, "-m", "prefopt.models.gguf", "--verify"], capture_output=True, text=True,
                       env={**os.environ, "PREFOPT_CACHE": str(cache)})
    assert p.returncode == 1 and f"{out}: model.safetensors has changed" in p.stdout, p.stdout + p.stderr
