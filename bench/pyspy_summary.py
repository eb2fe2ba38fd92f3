"""Sum a py-spy raw profile per function: self time and inclusive time.

    py-spy record --pid PID --duration 8 --rate 250 --format raw -o prof.raw
    python bench/pyspy_summary.py prof.raw [--top 30]

Each line of a raw profile is a collapsed stack (frames joined by ``;``) and a
sample count.  "Self" counts the samples a function was on top of the stack,
"inclusive" those it was anywhere on it (once per sample, however deep).
"""

from __future__ import annotations

import argparse
import collections
import sys


def _name(frame: str) -> str:
    """``Class.method (path/to/file.py:123)`` -> ``Class.method file.py:123``."""
    function, _, where = frame.partition(" (")
    return f"{function} {where.rstrip(')').rsplit('/', 1)[-1]}".strip()


def summarise(
    lines: list[str],
) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """Total samples, self samples per function, inclusive samples per function."""
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_name(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            anywhere[frame] += n
    return total, own, anywhere


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profile", help="a py-spy --format raw file")
    p.add_argument("--top", type=int, default=30)
    a = p.parse_args(argv)
    with open(a.profile, encoding="utf-8") as f:
        total, own, anywhere = summarise(f.readlines())
    if not total:
        print("no samples", file=sys.stderr)
        return 1
    print(f"{total} samples")
    for title, counter in (("self", own), ("inclusive", anywhere)):
        print(f"--- {title}")
        for name, n in counter.most_common(a.top):
            print(f"{100 * n / total:5.1f} %  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
