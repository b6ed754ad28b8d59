"""Write (or with --check, compare) dashboards/*.json from the Python sources."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hiw_dashboards import rendered

DEFAULT_OUT = Path(__file__).resolve().parents[2]  # dashboards/
REGENERATE = "python dashboards/generate.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hiw_dashboards", description=__doc__)
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="the directory of the dashboard files (default: dashboards/)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a file differs from the generated one",
    )
    args = parser.parse_args(argv)
    stale = []
    generated = rendered()
    for name, text in generated.items():
        path = args.out / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text, encoding="utf-8")
    orphans = sorted(p.name for p in args.out.glob("*.json") if p.name not in generated)
    for name in orphans:
        print(f"{args.out / name}: no generator in dashboards/src/hiw_dashboards", file=sys.stderr)
    if args.check:
        for name in stale:
            print(
                f"{args.out / name} differs from the generated one: run {REGENERATE}",
                file=sys.stderr,
            )
        return 1 if stale or orphans else 0
    for name in stale:
        print(f"wrote {args.out / name}")
    return 1 if orphans else 0


if __name__ == "__main__":
    sys.exit(main())
