"""The benchmark script keeps working (its figures are not judged here: no timed tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.mocks import ROOT


def test_benchmark_script_runs_and_writes_its_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/run.py",
            "--runs",
            "1",
            "--sizes",
            "2",
            "--group-sizes",
            "2",
            "--no-suite",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    (row,) = data["evaluation"]
    assert row["services"] == 2 and row["resources"] > 2 * 10
    (grouped,) = data["groupEvaluation"]
    # A group's resources do not grow with its size: a launch template and a group instead of an instance.
    assert grouped["group"] and grouped["instancesPerService"] == 3 and grouped["resources"] > row["resources"]
    assert {r["case"] for r in data["userData"]} == {
        "demo-like",
        "20 exclusions of each kind",
        "groups of 3",
        "groups, 20 exclusions each",
    }
    assert data["blastRadius"] == {"existingVms": 20, "changed": 0, "changedVms": []}
    assert "Blast radius" in result.stdout
    # Judged by the lifecycle simulator: what the engine would replace or delete, not user-data bytes.
    assert data["blastRadiusPlan"]["replaced"] == [] and data["blastRadiusPlan"]["deleted"] == 0
    # Measured on the recorded graph: the mesh VMs do not wait for the readiness gate.
    path = data["criticalPath"]
    assert path["toLastMeshVm"][-1].endswith("-instance") and not path["gateOnPath"]
    assert path["lastMeshVmCreatedAt"] < path["gateEndsAt"]
