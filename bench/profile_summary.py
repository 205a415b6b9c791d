"""Summarise py-spy collapsed stacks (`python -m bench --profile DIR` writes them):
`python -m bench.profile_summary DIR/commit-mariadb.txt [--top 25] [--under FUNC]`.

Prints, per thread kind, the functions with the most samples on the stack
(inclusive) and at the top of the stack (self), as a share of all samples.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_THREAD = re.compile(r"^thread \(0x[0-9A-Fa-f]+\)|^thread \(\d+\)")


def _frames(stack: str) -> list[str]:
    """Frames without line numbers ('func (file:line)' -> 'func (file)'); the thread frame dropped."""
    parts = stack.split(";")
    if parts and _THREAD.match(parts[0]):
        parts = parts[1:]
    return [re.sub(r":\d+\)$", ")", p) for p in parts]


def read(path: Path) -> Iterator[tuple[list[str], int]]:
    for line in path.read_text().splitlines():
        m = _LINE.match(line)
        if m:
            yield _frames(m["stack"]), int(m["count"])


def summarise(samples: Iterable[tuple[list[str], int]], under: str | None) -> tuple[int, Counter, Counter]:
    total, inclusive, own = 0, Counter(), Counter()
    for frames, count in samples:
        if under:
            cut = next((i for i, f in enumerate(frames) if under in f), None)
            if cut is None:
                continue
            frames = frames[cut:]
        total += count
        for f in set(frames):
            inclusive[f] += count
        if frames:
            own[frames[-1]] += count
    return total, inclusive, own


def report(path: Path, top: int, under: str | None) -> str:
    total, inclusive, own = summarise(read(path), under)
    lines = [f"{path.name}: {total} samples" + (f" under {under}" if under else "")]
    for title, counter in (("inclusive", inclusive), ("self", own)):
        lines.append(f"-- {title}")
        lines += [f"{100 * n / max(total, 1):5.1f}%  {f}" for f, n in counter.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_summary", description=__doc__)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--under", help="only samples with a frame containing this text, counted from it")
    args = p.parse_args(argv)
    for path in args.files:
        print(report(path, args.top, args.under) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
