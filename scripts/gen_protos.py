"""Regenerate the gRPC stubs in services/rlhf/v1 from protos/rlhf/v1.

python scripts/gen_protos.py            # write the stubs
python scripts/gen_protos.py --out DIR  # write them elsewhere (the drift test)
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every .proto under protos/; stubs land at out_dir/rlhf/v1/."""
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(PROTO_ROOT)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    pkg = out_dir / "rlhf" / "v1"
    (pkg / "__init__.py").write_text('"""Generated gRPC stubs for the rlhf.v1 API (do not edit)."""\n')
    return sorted(pkg.iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "services")
    generate(parser.parse_args().out)


if __name__ == "__main__":
    sys.exit(main())
