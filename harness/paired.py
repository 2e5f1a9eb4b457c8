"""`python -m harness.paired`: two readings of the same photos, photo by photo (the pairing lives in
`harness.outputs.paired`)."""
from __future__ import annotations

import argparse
import sys

from harness.outputs.paired import PairedInputError, load_side, pair, parse_side, render


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.paired", description=__doc__.splitlines()[0])
    ap.add_argument("a", type=parse_side, help="RUN[:MODEL], the reading to compare against")
    ap.add_argument("b", type=parse_side, help="RUN[:MODEL], the new reading")
    ap.add_argument("--top", type=int, default=8, help="how many of the photos that moved most to list")
    args = ap.parse_args(argv)
    try:
        a, rows_a = load_side(args.a)
        b, rows_b = load_side(args.b)
        print(render(pair(a, rows_a, b, rows_b), args.top), end="")
    except PairedInputError as exc:
        print(f"paired: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
