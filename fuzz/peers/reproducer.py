"""A divergence as a qtest script a QEMU maintainer can run without this project.

`vsmmu diff-qemu --emit-qtest FILE` runs the case again on a fresh QEMU with
`QemuPeer.record` on, which keeps every qtest command in the order QEMU got
it, from machine set-up (finding and enabling the edu device) to the last
read, with each answer as a comment.  The script's header says how to run it:

    printf '\\x7f\\x20\\x03\\xd5\\xff\\xff\\xff\\x17' > wfi.bin   # wfi; b .
    timeout 60 qemu-system-aarch64 <the peer's machine> -bios wfi.bin \\
        -qtest stdio < FILE

and lists where our model and QEMU differ (each aspect: ours, QEMU's).  QEMU
answers every line; it answers a comment line with "FAIL Unknown command '#'",
which is harmless (an empty line would abort it: there are none), and it does
not exit at the end of its input, hence the `timeout`.  After each edu DMA the
script polls REPLAY_POLLS more times than QEMU needed when recorded, so that a
slower replay still sees the DMA done.
"""

from __future__ import annotations

import json
import shlex

from .comparison import Observation
from .divergences import EXPLAINED, CaseResult
from .execution import QemuTarget, execute
from .qemu_peer import MACHINE_ARGS, WFI_BIOS, PeerCrash, QemuPeer


def pick(results: list[CaseResult]) -> CaseResult | None:
    """The case to reproduce: the first unexplained divergence, else the first one."""
    divergent = [r for r in results if r.verdict is not None]
    unexplained = [r for r in divergent if r.verdict not in EXPLAINED]
    return (unexplained or divergent or [None])[0]


def record(binary: str, case: CaseResult) -> list[str]:
    """The qtest commands of `case` on a fresh QEMU, answers as comments."""
    peer = QemuPeer(binary)
    peer.record = []
    try:
        peer.start()
        execute(case.scenario, QemuTarget(peer), class_known=peer.version_tuple >= (9, 1))
    except PeerCrash as e:
        peer.record.append(f"# QEMU died here: {e}")
    finally:
        peer.close()
    return peer.record


def script(case: CaseResult, commands: list[str], qemu_version: str) -> str:
    s = case.scenario
    bios = "".join(f"\\x{b:02x}" for b in WFI_BIOS)
    run = shlex.join(["qemu-system-aarch64", *MACHINE_ARGS, "-bios", "wfi.bin",
                      "-qtest", "stdio"])
    lines = [f"# vsmmu diff-qemu --seed {s.seed} --start {s.index} --cases 1: {s.name}",
             f"# verdict: {case.verdict}" + (f" ({', '.join(case.known)})" if case.known
                                             else ""),
             f"# recorded against {qemu_version}",
             "# run it:",
             f"#   printf '{bios}' > wfi.bin   # the vCPU parks in `wfi; b .`",
             f"#   timeout 60 {run} < THIS_FILE",
             "# QEMU answers each line (these comments with \"FAIL Unknown command\": harmless);",
             "# the answers it gave when recorded follow each read as '# QEMU: ...'.",
             "# where our SMMUv3 model (expected) and QEMU (observed) differ:"]
    for d in case.diffs:
        where = "" if d.step is None else f" at step {d.step}"
        lines.append(f"#   {d.aspect}{where}:")
        lines.append(f"#     expected (ours): {_short(d.ours)}")
        lines.append(f"#     observed (QEMU): {_short(d.qemu)}")
    if case.qemu.crash:
        lines.append(f"#   QEMU crashed: {case.qemu.crash[:300]}")
    return "\n".join([*lines, *commands]) + "\n"


def _short(value: object) -> str:
    if isinstance(value, Observation):
        value = value.__dict__
    return json.dumps(value, default=str)[:400]
