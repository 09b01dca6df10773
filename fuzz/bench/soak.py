"""`vsmmu bench soak`: a long default campaign, watched minute by minute.

Runs `vsmmu fuzz` (the default campaign: system target, every invariant, Z3 on)
as a child for `--time` seconds (default an hour) and samples, once a minute:
execs/s in that minute (from the campaign's progress lines), the resident memory
of the campaign and its workers (VmRSS from /proc, summed over the process
tree), and the working corpus (inputs, mean input length, mean operations per
input).  It prints the minutes and the first minute beside the last with their
ratio, so that a slowdown or growth shows, and with it what grew alongside.

    ./run vsmmu bench soak [--time 3600] [--no-z3] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import options
from ..program import MAX_BYTES, decode
from .speed import table

MINUTE = 60.0
_PROGRESS = re.compile(r"\] \S+: ([\d,]+) execs")


@dataclass
class Minute:
    minute: int
    execs_per_s: float
    rss_mib: float
    corpus: int
    mean_bytes: float
    mean_ops: float


def _tree_rss_kib(root: int) -> int:
    """VmRSS of `root` and every descendant."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        pid = int(entry.name)
        for line in status.splitlines():
            if line.startswith("PPid:"):
                parents[pid] = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss[pid] = int(line.split()[1])
    total, frontier = rss.get(root, 0), {root}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier}
        total += sum(rss.get(p, 0) for p in frontier)
    return total


def _corpus_shape(corpus: Path) -> tuple[int, float, float]:
    sizes, ops = [], []
    for path in corpus.iterdir():
        try:
            data = path.read_bytes()[:MAX_BYTES]
        except OSError:
            continue
        sizes.append(len(data))
        ops.append(len(decode(data)))
    n = len(sizes)
    return n, (sum(sizes) / n if n else 0.0), (sum(ops) / n if n else 0.0)


def soak(seconds: float, *, z3: bool = True, design: str | None = None,
         say=print) -> list[Minute]:
    with tempfile.TemporaryDirectory(prefix="vsmmu-soak-") as tmp:
        corpus, artifacts = Path(tmp, "corpus"), Path(tmp, "artifacts")
        corpus.mkdir()
        cmd = [sys.executable, "-c", "import sys; from fuzz.cli import main; sys.exit(main())",
               "fuzz", "--time", str(seconds), "--json", "--corpus", str(corpus),
               "--artifacts", str(artifacts), *([] if z3 else ["--no-z3"]),
               *(["--design", design] if design else [])]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, cwd=Path(__file__).resolve().parents[2])
        execs = [0]

        def follow() -> None:
            for line in proc.stderr:
                if m := _PROGRESS.search(line):
                    execs[0] = int(m[1].replace(",", ""))

        threading.Thread(target=follow, daemon=True).start()
        minutes: list[Minute] = []
        start = last = time.monotonic()
        last_execs = 0
        while proc.poll() is None:
            time.sleep(1.0)
            now = time.monotonic()
            if now - last < MINUTE or now - start > seconds:
                continue  # not a minute yet, or the campaign is stopping (its replay)
            n, mean_bytes, mean_ops = _corpus_shape(corpus)
            row = Minute(len(minutes) + 1, round((execs[0] - last_execs) / (now - last), 1),
                         round(_tree_rss_kib(proc.pid) / 1024, 1), n, round(mean_bytes, 1),
                         round(mean_ops, 2))
            minutes.append(row)
            say(f"minute {row.minute}: {row.execs_per_s} execs/s, {row.rss_mib} MiB, corpus "
                f"{row.corpus} (mean {row.mean_bytes} bytes, {row.mean_ops} ops)")
            last, last_execs = now, execs[0]
        say(f"campaign done in {time.monotonic() - start:.0f} s (status {proc.returncode})")
    return minutes


def format_text(minutes: list[Minute]) -> str:
    head = ["minute", "execs/s", "RSS MiB", "corpus", "mean bytes", "mean ops"]
    rows = [[str(m.minute), f"{m.execs_per_s:g}", f"{m.rss_mib:g}", str(m.corpus),
             f"{m.mean_bytes:g}", f"{m.mean_ops:g}"] for m in minutes]
    out = [table("", head, rows)]
    if len(minutes) >= 2:
        a, b = minutes[0], minutes[-1]
        out.append(f"first minute vs last: execs/s {a.execs_per_s:g} -> {b.execs_per_s:g} "
                   f"(x{b.execs_per_s / max(a.execs_per_s, 1e-9):.2f}), RSS {a.rss_mib:g} -> "
                   f"{b.rss_mib:g} MiB (x{b.rss_mib / max(a.rss_mib, 1e-9):.2f}), mean ops per "
                   f"input {a.mean_ops:g} -> {b.mean_ops:g}")
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--time", type=options.seconds, default=3600.0, metavar="S",
                        help="campaign length, seconds (default 3600)")
    parser.add_argument("--no-z3", action="store_true", help="skip the Z3 state checks")
    options.add_design(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def main(args: argparse.Namespace) -> int:
    minutes = soak(args.time, z3=not args.no_z3, design=args.design,
                   say=lambda text: print(text, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps({"minutes": [asdict(m) for m in minutes]}, indent=2))
    else:
        print(format_text(minutes))
    return 0 if minutes else 2


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="python -m fuzz.bench.soak", description=__doc__)
    add_arguments(_p)
    sys.exit(main(_p.parse_args()))
