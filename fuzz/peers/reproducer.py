"""A divergence as a standalone qtest script: QEMU's side of it, replayable by anyone.

`qtest_script(case)` writes the qtest commands the peer sent for the case, in
order (the machine's set-up, the structures and registers, the edu DMAs, the
reads that show the outcome), for

    timeout 30 qemu-system-aarch64 <MACHINE_ARGS> -qtest stdio < FILE

Comment lines carry what the case is, QEMU's answer to each read as the peer saw
it, and what our model (the architecture) gave instead; QEMU answers FAIL to
each comment line and goes on, so the answers of the commands stay in order.  A
read the peer repeated is a poll of the edu DMA's busy bit: the script polls
longer, so that a slower replay still waits for the DMA before it goes on.
"""

from __future__ import annotations

import itertools
import shlex

from .divergences import CaseResult
from .qemu_peer import EDU_DMA_CMD, MACHINE_ARGS, PCI_MMIO32, WFI_BIOS

_READS = ("read", "b64read", "inb", "inw", "inl")  # reads: their answers are the outcome
# The edu DMA's busy bit (edu's BAR is at the bottom of the 32-bit PCI window), and any
# read the peer repeated, are polls: the script polls this many times more, so that a
# replay faster than the peer's socket round trips still sees the DMA finish.
EDU_BUSY = f"readq {PCI_MMIO32 + EDU_DMA_CMD:#x}"
EXTRA_POLLS = 200


def qtest_script(case: CaseResult, qemu_version: str) -> str:
    s = case.scenario
    command = "qemu-system-aarch64 " + " ".join(map(shlex.quote, MACHINE_ARGS))
    bios = "".join(f"\\{b:03o}" for b in WFI_BIOS)
    out = [f"# vsmmu diff-qemu reproducer: case {s.name} (seed {s.seed}, index {s.index})",
           f"# seen on {qemu_version}; verdict: {case.verdict}"
           + (f" ({', '.join(case.known)})" if case.known else ""),
           "# run (a vCPU parked in `wfi; b .` lets the edu DMA timer fire at once):",
           f"#   printf '{bios}' > wfi.bin",
           f"#   timeout 30 {command} -bios wfi.bin -qtest stdio -qtest-log none < THIS_FILE",
           "# (QEMU stays up at the end of the script: the time-out ends it)",
           f"# replay both sides: vsmmu diff-qemu --seed {s.seed} --start {s.index} --cases 1"]
    for cmd, group in itertools.groupby(case.qtest or (), key=lambda ca: ca[0]):
        answers = [a for _, a in group]
        poll = cmd == EDU_BUSY or (len(answers) > 1 and cmd.startswith(_READS))
        out += [cmd] * (len(answers) + (EXTRA_POLLS if poll else 0))
        if cmd.startswith(_READS):
            out.append(f"# QEMU answered: {answers[-1]}" + (" (the last poll)" if poll else ""))
    out.append("# where QEMU and the architecture (our model) differ:")
    for d in case.diffs:
        where = d.aspect if d.step is None else f"{d.aspect} at step {d.step}"
        out.append(f"#   {where}: ours {d.ours!r}, QEMU {d.qemu!r}")
    return "\n".join(out) + "\n"
