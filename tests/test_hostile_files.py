"""The hostile model-file corpus (tests/hostile_corpus.py): every file, read by
read_dl_model in a child process under a memory limit (RLIMIT_AS) and a timeout, must end
with HOperatorError (7780 / 7782 native, 7801 ONNX) — never another exception, a crash, a
success, or a run past the limits."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from helpers import halcdl_path  # noqa: E402

PKG = halcdl_path()  # the halcdl this process tests (installed, or python/ built in place)
MEM_LIMIT = 3 * 2**30      # address space of the reading process
TIMEOUT = 240              # seconds for the whole corpus in one child (each file: < 1 s)

# One child reads the files in turn and reports each outcome as a JSON line; when a file
# kills it (signal, exit, memory), the parent records that file and starts a fresh child on
# the files after it.
_CHILD = r"""
import json, os, resource, sys, warnings
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
sys.path.insert(0, sys.argv[1])
warnings.simplefilter("ignore")
import halcdl as ha
for path in sys.argv[3:]:
    print(json.dumps({"file": os.path.basename(path), "start": True}), flush=True)
    try:
        ha.read_dl_model(path)
        r = {"outcome": "accepted"}
    except ha.HOperatorError as e:
        r = {"outcome": "HOperatorError", "code": e.error_code, "message": e.message[:300]}
    except BaseException as e:
        r = {"outcome": type(e).__name__, "message": str(e)[:300]}
    r["file"] = os.path.basename(path)
    print(json.dumps(r), flush=True)
"""


def read_all(paths: list[str]) -> dict:
    results: dict = {}
    todo = list(paths)
    while todo:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        try:
            p = subprocess.run([sys.executable, "-c", _CHILD, PKG, str(MEM_LIMIT), *todo],
                               capture_output=True, text=True, timeout=TIMEOUT, env=env)
            out, died = p.stdout, p.returncode != 0
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            died = True
        started = None
        for line in out.splitlines():
            r = json.loads(line)
            if r.get("start"):
                started = r["file"]
            else:
                results[r["file"]] = r
                started = None
        done = {os.path.basename(t) for t in todo} & set(results)
        if started is not None:  # the child died (or hung) on this file
            results[started] = {"outcome": "child died or timed out", "file": started}
        elif died and not done:
            raise AssertionError(f"the reading child failed: {p.stderr[-2000:]}")
        todo = [t for t in todo if os.path.basename(t) not in results]
    return results


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    sys.path.insert(0, HERE)
    import hostile_corpus

    folder = tmp_path_factory.mktemp("hostile")
    cases = hostile_corpus.generate(str(folder))
    return str(folder), cases


def test_valid_files_read(corpus):
    folder, _ = corpus
    import halcdl as ha

    for name in ("valid.hdl", "valid.onnx"):
        if os.path.exists(os.path.join(folder, name)):
            ha.read_dl_model(os.path.join(folder, name))


def test_every_hostile_file_ends_in_hoperatorerror(corpus):
    folder, cases = corpus
    assert len(cases) >= 50
    results = read_all([os.path.join(folder, n) for n in cases])
    bad = {n: results.get(n) for n in cases
           if results.get(n, {}).get("outcome") != "HOperatorError"
           or results[n]["code"] not in (7780, 7782, 7801)}
    assert not bad, "\n".join(f"{n} ({cases[n]}): {r}" for n, r in bad.items())
    # each error names the file
    for n in cases:
        assert n in results[n]["message"], results[n]
