"""The results store under concurrent writers: nothing lost, nothing corrupt, bad files reported."""

import json
import multiprocessing as mp
import os

from prefopt.leaderboard import store


def _writer(results_dir, worker, n, shared):
    for i in range(n):
        # every worker rewrites the shared hashes (last complete write wins) and writes its own
        for h in ([f"shared{i % shared}"] if shared else []) + [f"w{worker}-{i}"]:
            rec = {"config_hash": h, "status": "ok", "eval": {"gold_reward": i, "pad": "x" * (2000 + 37 * i)},
                   "leaderboard": {"suite": "t", "worker": worker, "i": i}}
            store.write_result(results_dir, rec)


def _reader(results_dir, rounds, q):
    bad = []
    for _ in range(rounds):
        for name in os.listdir(results_dir):
            if name.startswith(store.TMP_PREFIX):
                continue
            try:
                with open(os.path.join(results_dir, name)) as f:
                    json.load(f)
            except FileNotFoundError:
                pass
            except json.JSONDecodeError as e:
                bad.append(f"{name}: {e}")
    q.put(bad)


def test_concurrent_writers_lose_nothing_and_never_expose_a_partial_file(tmp_path):
    d = str(tmp_path / "results")
    os.makedirs(d)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    workers, n, shared = 6, 60, 5
    procs = [ctx.Process(target=_writer, args=(d, w, n, shared)) for w in range(workers)]
    reader = ctx.Process(target=_reader, args=(d, 30, q))
    for p in procs + [reader]:
        p.start()
    for p in procs + [reader]:
        p.join(120)
        assert p.exitcode == 0
    assert q.get(timeout=10) == []  # a reader never saw a half-written file
    loaded = store.load_results(d)
    assert loaded.problems == [] and loaded.failed == []
    hashes = {r["config_hash"] for r in loaded.ok}
    assert hashes == {f"w{w}-{i}" for w in range(workers) for i in range(n)} | {f"shared{k}" for k in range(shared)}
    assert not [f for f in os.listdir(d) if f.startswith(store.TMP_PREFIX)]  # no temporary file left behind


def test_corrupt_partial_and_foreign_files_are_reported_not_counted(tmp_path):
    d = str(tmp_path)
    store.write_result(d, {"config_hash": "good", "status": "ok", "eval": {}, "leaderboard": {}})
    store.write_result(d, {"config_hash": "bad", "status": "failed", "error": "boom", "leaderboard": {}})
    (tmp_path / "trunc.json").write_text('{"config_hash": "trunc", "status": "o')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "renamed.json").write_text(json.dumps({"config_hash": "other", "status": "ok", "eval": {},
                                                       "leaderboard": {}}))
    (tmp_path / "noeval.json").write_text(json.dumps({"config_hash": "noeval", "status": "ok", "leaderboard": {}}))
    (tmp_path / f"{store.TMP_PREFIX}x-123.json").write_text('{"config_hash": ')
    (tmp_path / "README.txt").write_text("not a result")
    loaded = store.load_results(d)
    assert [r["config_hash"] for r in loaded.ok] == ["good"]
    assert [r["config_hash"] for r in loaded.failed] == ["bad"]
    why = dict(loaded.problems)
    assert set(why) == {"trunc.json", "list.json", "renamed.json", "noeval.json", f"{store.TMP_PREFIX}x-123.json"}
    assert "corrupt JSON" in why["trunc.json"] and "partial" in why[f"{store.TMP_PREFIX}x-123.json"]
    assert "does not match" in why["renamed.json"] and "eval" in why["noeval.json"]
    assert store.has_result(d, "good") and not store.has_result(d, "bad") and not store.has_result(d, "trunc")
