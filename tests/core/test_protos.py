"""The committed stubs are exactly what grpcio-tools generates from protos/."""

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_have_no_drift(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)], check=True)
    fresh, committed = tmp_path / "rlhf" / "v1", ROOT / "services" / "rlhf" / "v1"
    fresh_files = sorted(p.name for p in fresh.iterdir() if p.is_file())
    committed_files = sorted(p.name for p in committed.iterdir() if p.is_file() and p.suffix != ".pyc")
    assert fresh_files == committed_files, "stub files differ: run `make protos` and commit"
    _, mismatch, errors = filecmp.cmpfiles(fresh, committed, fresh_files, shallow=False)
    assert not mismatch and not errors, f"stale stubs {mismatch + errors}: run `make protos` and commit"


def test_every_service_is_in_package_rlhf_v1():
    from rlhf.v1 import learner_pb2, policy_pb2, reference_pb2, reward_pb2

    names = {
        s.full_name
        for mod in (reward_pb2, policy_pb2, reference_pb2, learner_pb2)
        for s in mod.DESCRIPTOR.services_by_name.values()
    }
    assert names == {"rlhf.v1.RewardScoring", "rlhf.v1.PolicyInference", "rlhf.v1.ReferencePolicy", "rlhf.v1.Learner"}
