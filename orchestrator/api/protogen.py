"""Generate the Python stubs of `proto/pdserve/v1/*.proto` into `orchestrator/api/pb/`.

    python -m orchestrator.api.protogen          # regenerate
    python -m orchestrator.api.protogen --check  # exit 1 when the committed stubs are stale

The stubs live in a package of ours, not a top-level `proto`/`pdserve.v1` package: `proto` is taken by
proto-plus, and `pdserve` is the SDK. grpc_tools writes `from pdserve.v1 import x_pb2`; we rewrite those
imports to `from orchestrator.api.pb import x_pb2`. Needs grpcio-tools (the `test` extra).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "proto"
OUT_DIR = Path(__file__).resolve().parent / "pb"
_IMPORT = re.compile(r"^from pdserve\.v1 import (\w+_pb2)", re.MULTILINE)


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "pdserve" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Compile every .proto into flat modules in out_dir; return the files written."""
    from grpc_tools import protoc  # deferred: only the generator needs grpcio-tools
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}", *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()]]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed; see the messages above")
        written = []
        out_dir.mkdir(parents=True, exist_ok=True)
        for src in sorted((Path(tmp) / "pdserve" / "v1").iterdir()):
            text = _IMPORT.sub(r"from orchestrator.api.pb import \1", src.read_text())
            dest = out_dir / src.name
            dest.write_text(text)
            written.append(dest)
    return written


def stale_files() -> list[str]:
    """Names of stub files whose committed text differs from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p.read_text() for p in generate(Path(tmp))}
    stale = [name for name, text in fresh.items()
             if not (OUT_DIR / name).exists() or (OUT_DIR / name).read_text() != text]
    return sorted(stale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the committed stubs are stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated stubs: " + ", ".join(stale) + "\nrun: python -m orchestrator.api.protogen", file=sys.stderr)
            return 1
        return 0
    for path in generate(OUT_DIR):
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
