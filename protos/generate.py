"""Regenerate the committed wire code under fedsilo/v1/ from protos/ (python protos/generate.py)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
PROTO_FILES = ["fedsilo/v1/fedsilo.proto"]


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) into out_dir and return the files it wrote."""
    from grpc_tools import protoc  # imported here: grpcio-tools is a dev dependency only

    out_dir.mkdir(parents=True, exist_ok=True)
    # protoc finds the mypy plugin on PATH; use the one installed beside this interpreter.
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for p in (out_dir / "fedsilo" / "v1").glob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT, help="output root")
    written = generate(parser.parse_args().out)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
