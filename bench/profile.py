"""Summarise py-spy collapsed stacks (``python -m bench --profile DIR``) as text.

A flame graph needs a browser; the report needs a few lines of evidence. For
each file this prints the functions with the most samples on top of the
stack (self) and on the stack at all (inclusive), as shares of all samples.
Run: ``python -m bench.profile DIR/bridge-123.txt [--top 15]``.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    """``frame;frame;...;leaf count`` lines into (frames, samples) pairs."""
    stacks = []
    for line in text.splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks.append((frames.split(";"), int(count)))
    return stacks


def top_functions(stacks: list[tuple[list[str], int]], top: int) -> tuple[int, list, list]:
    """Total samples, then the ``top`` (frame, samples) by self and by inclusive time."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for frames, count in stacks:
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return total, own.most_common(top), inclusive.most_common(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    for path in args.files:
        total, own, inclusive = top_functions(parse_collapsed(path.read_text()), args.top)
        print(f"== {path.name}: {total} samples")
        for title, rows in (("self", own), ("inclusive", inclusive)):
            print(f"-- {title}")
            for frame, count in rows:
                print(f"{count / max(total, 1):6.1%}  {frame}")


if __name__ == "__main__":
    main()
