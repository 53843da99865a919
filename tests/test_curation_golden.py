"""Every curation output of the golden build is byte-identical to the committed digests.

The golden build (tests/golden_build.py) is the demo config's build-dataset on a small mini web, from a
pinned pool (the download step's outputs, committed under tests/golden/pool/, since a live download's sample
order and slow links depend on timing): extract, train-filter, score, dedup, safety, select and the
manifest run in-process through the one step list. The sha256 of every file they write under curation/
(pairs, the filter network, score parts, dedup and safety keep files, subset parts, subset.npy, shards,
stats, manifest) must equal ``tests/golden/curation_build.json``. This is the guard that a refactor changes
no output: a failure lists each file that changed or went missing. Afterwards every step is fresh (what
`openaim status` shows).

Bytes are compared where the environment is the golden's (the versions of the libraries that write the
files and compute the floats, and the machine's architecture: ``golden_build.environment``); elsewhere
(e.g. a clean install with a newer pyarrow, which names itself in every parquet file) what the files hold
is compared: parquet schema and rows, tar members, arrays, tensors (``golden_build.content_digest``). The
floats (the filter network's weights, the scores) are computed on one torch thread; a machine whose CPU
kernels sum in another order may still differ, and the failure names the environment's differences.

A step added to the list (docs/architecture.md, "Adding a step") leaves this test passing: a file that is
not in the golden digests yet is not compared, and the manifest is digested without its "ran" and
"reused" lists (the names of the steps that ran, which the new step joins); rewrite the digests to cover
its outputs.

When a change of output is intended (a step's VERSION bump, a new default), rewrite the digests and commit
them with the change, saying why in the commit message:

    OPENAIM_UPDATE_GOLDEN=1 pytest -q tests/test_curation_golden.py
"""

from __future__ import annotations

import json
import os

import pytest

from tests.golden_build import DIGESTS, build, digests, environment


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    curation_dir, states = build(tmp_path_factory.mktemp("golden") / "run")
    return digests(curation_dir), states


def test_every_step_fresh_after_the_build(built):
    _, states = built
    assert {"extract", "download", "train-filter", "score", "dedup", "safety", "select"} <= \
        {name for name, _ in states}
    assert [(name, s.reasons) for name, s in states if not s.fresh] == []


def test_curation_outputs_match_golden_digests(built):
    built, _ = built
    assert any(name.startswith("shards/") for name in built), "the build wrote no shards"
    assert "subset.npy" in built and "manifest.json" in built, sorted(built)
    env = environment()
    if os.environ.get("OPENAIM_UPDATE_GOLDEN") == "1":
        DIGESTS.write_text(json.dumps({"environment": env, "files": built}, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"rewrote {DIGESTS} ({len(built)} files)")
    golden = json.loads(DIGESTS.read_text())
    # bytes where the libraries that write them are the golden's, else what the files hold
    kind = "bytes" if golden["environment"] == env else "content"
    files = golden["files"]
    changed = sorted(n for n in files.keys() & built.keys() if files[n][kind] != built[n][kind])
    missing = sorted(files.keys() - built.keys())
    problems = [f"changed: {n}" for n in changed] + [f"missing: {n}" for n in missing]
    differs = {k: f"{golden['environment'].get(k)} -> {v}" for k, v in env.items()
               if golden["environment"].get(k) != v}
    assert not problems, (
        f"curation outputs differ from tests/golden/curation_build.json ({kind} compared"
        + (f"; environment differs from the golden's: {differs}" if differs else "")
        + "; if intended, rerun with OPENAIM_UPDATE_GOLDEN=1):\n" + "\n".join(problems))
