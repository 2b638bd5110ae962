"""prefopt-train on bad GGUF input: a file that lacks a tensor or holds one of the wrong shape, a
chat template past its bounds, and a model.gguf_package that is no package name or is not
installed are each one line on stderr (no traceback, no progress bars), and nothing is cached."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from gguf_files import bpe_tokenizer, tiny_llama, write_gguf
from short_runs import ENV, cli, one_line_error


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_gguf")
    tok = bpe_tokenizer()
    model = tiny_llama(len(tok))
    write_gguf(str(d / "lacking.gguf"), model, tok, drop=("blk.0.ffn_up.weight",))
    write_gguf(str(d / "misshapen.gguf"), model, tok, replace={"blk.1.attn_k.weight": np.zeros((8, 32), np.float32)})
    write_gguf(str(d / "bomb.gguf"), model, tok, chat_template="{{ 'x' * 10**9 }}")
    data = d / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "What is 7+5?", "chosen": " 12", "rejected": " 13"}) + "\n")
    return d


@pytest.mark.parametrize("name,needles", [
    ("lacking.gguf", ["lacks 1 tensor", "blk.0.ffn_up.weight"]),
    ("misshapen.gguf", ["blk.1.attn_k.weight", "[8, 32]", "[16, 32]"]),
    ("bomb.gguf", ["chat template", "1000000000"]),
])
def test_a_bad_gguf_file_is_one_line_and_nothing_is_cached(files, tmp_path, name, needles):
    args = ["algo=dpo", "data=hf", f"data.path={files / 'pairs.jsonl'}", f"model.name_or_path={files / name}",
            "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'run'}", "trainer.progress=false"]
    p = subprocess.run([sys.executable, "-m", "prefopt.cli.train", *args], capture_output=True, text=True,
                       env={**ENV, "PREFOPT_CACHE": str(tmp_path / "cache")}, timeout=600)
    one_line_error(p, str(files / name), *needles)
    cached = tmp_path / "cache" / "gguf"
    assert not cached.is_dir() or all(n.endswith(".lock") for n in os.listdir(cached))


@pytest.mark.parametrize("package,needle", [("..x", "is not a package name"),
                                            ("no_such_pkg.sub", "is not installed"),
                                            ("os.sub", "os is a module, not a package folder")])
def test_a_bad_gguf_package_is_one_line_without_importing_it(package, needle):
    one_line_error(cli("algo=dpo", f"model.gguf_package={package}", "model.gguf_file=x.gguf"),
                   f"model.gguf_package={package}", needle)
