"""A process that only serves a package imports no Dynamo: `import fusec`, `fusec.load` and the
first call leave torch._dynamo (and Inductor) unimported; fusec.compile and friends import it when
first used, and work as before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import fusec

ROOT = Path(__file__).resolve().parent.parent

_SERVE = """
import json, sys, torch
import fusec
imported = sorted(m for m in sys.modules if m.startswith(("torch._dynamo", "torch._inductor")))
runner = fusec.load(sys.argv[1])
x = torch.arange(48, dtype=torch.float32).reshape(4, 12) / 7
torch.testing.assert_close(runner(x), torch.softmax(x, -1) * x.sum(-1, keepdim=True))
after = sorted(m for m in sys.modules if m.startswith(("torch._dynamo", "torch._inductor")))
ran = dict(runner.report().graphs[0].runtime.counts.kernels)
compiled = fusec.compile(lambda y: y * 2 + 1)(torch.ones(3)).tolist()
print(json.dumps({"at_import": imported, "after_call": after, "ran": ran, "compiled": compiled,
                  "dynamo_later": "torch._dynamo" in sys.modules}))
"""


def test_serving_a_package_imports_no_dynamo(tmp_path):
    def fn(x):
        return torch.softmax(x, -1) * x.sum(-1, keepdim=True)
    exported = fusec.export(fn, torch.randn(4, 12), path=tmp_path / "f.fusec")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", _SERVE, str(exported.path)], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["at_import"] == [] and result["after_call"] == []
    assert result["ran"] == dict.fromkeys((k.id for k in exported.record.plan.kernels), 1)
    assert result["compiled"] == [3.0, 3.0, 3.0] and result["dynamo_later"]


def test_lazy_names_are_the_api_functions():
    from fusec import api, exporter

    assert (fusec.compile, fusec.inspect, fusec.report_of, fusec.export) == (
        api.compile, api.inspect, api.report_of, exporter.export)
