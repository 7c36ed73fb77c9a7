"""Hot spots from py-spy's raw (collapsed) output: ``python -m bench.profile FILE [-n 25]``.

``python -m bench.run --profile DIR`` records one file per floor/aibridge run with
``py-spy record --nonblocking -f raw`` (``pip install -e '.[bench]'``); this prints, per
function, the share of samples where it is on the stack (inclusive) and on top (self).
"""

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _name(frame: str) -> str:
    m = _FRAME.match(frame)
    if m is None:
        return frame
    path = m["file"]
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m['func']} ({path})"


def summarize(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    total = 0
    inclusive: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_name(f) for f in stack.split(";")]
        total += n
        self_[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    return total, inclusive, self_


def report(path: Path, top: int = 25) -> str:
    total, inclusive, self_ = summarize(path)
    if not total:
        return f"{path}: no samples"
    lines = [f"{path}: {total} samples", "", "self %  function"]
    lines += [f"{n / total * 100:6.1f}  {f}" for f, n in self_.most_common(top)]
    lines += ["", "incl %  function"]
    lines += [f"{n / total * 100:6.1f}  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("file", type=Path, nargs="+")
    parser.add_argument("-n", "--top", type=int, default=25)
    args = parser.parse_args()
    for path in args.file:
        print(report(path, args.top))


if __name__ == "__main__":
    main()
