"""Write csrc/op_schema.h from hardloss_cuda/_schema.py (its one source; see there why).

    python scripts/gen_op_schema.py          # rewrite the header
    python scripts/gen_op_schema.py --check  # exit 1 when the checked-in header is stale

_schema.py is loaded by its path, not through the package: it needs torch only, not the
compiled library that the header is for.
"""

import argparse
import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
HEADER = ROOT / "csrc" / "op_schema.h"


def load_schema():
    spec = importlib.util.spec_from_file_location("_hl_schema", ROOT / "hardloss_cuda" / "_schema.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when the header differs")
    args = ap.parse_args(argv)
    text = load_schema().c_header()
    if args.check:
        if HEADER.read_text() != text:
            print(f"{HEADER} is stale: run python scripts/gen_op_schema.py", file=sys.stderr)
            return 1
        return 0
    HEADER.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
