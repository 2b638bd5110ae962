"""conf/ and kernels/ live at the repository root but ship inside the wheel."""

import pathlib
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_wheel_carries_the_config_tree_and_kernels(tmp_path):
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT),
                        "-w", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    (whl,) = tmp_path.glob("prefopt-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    for yaml in ROOT.joinpath("conf").rglob("*.yaml"):
        assert f"prefopt/conf/{yaml.relative_to(ROOT / 'conf').as_posix()}" in names, yaml
    assert "prefopt_kernels/__init__.py" in names
    assert "prefopt/cli/train.py" in names
    # Every module of the source tree ships (pyproject.toml lists the packages one by one).
    for py in ROOT.joinpath("prefopt").rglob("*.py"):
        assert py.relative_to(ROOT).as_posix() in names, py
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert entry and "prefopt-train = prefopt.cli.train:main" in zipfile.ZipFile(whl).read(entry[0]).decode()
