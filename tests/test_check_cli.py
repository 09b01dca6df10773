"""`vsmmu check`: replays a program with every invariant on; exit 0 clean, 1 on a
violation (with the step and witness), 2 with one error line for a bad file."""

from __future__ import annotations

import json

from fuzz.cli import main
from fuzz.program import encode, parse
from fuzz.runner import DMA_IOVA, boot
from vsmmu.hw.memory import PAGE_SIZE
from vsmmu.hyp.host import GUEST_RAM
from vsmmu.hyp.hypervisor import Hypervisor

# Cache nic0's translation of its DMA buffer, balloon that page to g1, DMA again.
_PAGE = (boot(monitor=False).domains["nic0"].table.translate(DMA_IOVA) - GUEST_RAM) // PAGE_SIZE
STALE = f"""\
dma device=0x0 iova={DMA_IOVA:#x} size=0x3 flags=0x0 ssid=0x0
reassign guest=0x0 page={_PAGE:#x} dst=0x1 dst_page=0x0
dma device=0x0 iova={DMA_IOVA:#x} size=0x3 flags=0x1 ssid=0x0
"""


def test_clean_program(tmp_path, capsys):
    path = tmp_path / "p.txt"
    path.write_text(STALE)
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().out.endswith("every invariant held after each\n")


def test_bytes_and_json(tmp_path, capsys):
    path = tmp_path / "crash-0"
    path.write_bytes(encode(parse(STALE)))
    assert main(["check", "--json", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["ops"], out["executed"], out["result"]) == (3, 3, "clean")


def test_violation_found_with_witness(tmp_path, capsys, monkeypatch):
    # A hypervisor that forgets to invalidate lets the cached translation reach g1's page.
    monkeypatch.setattr(Hypervisor, "_invalidate_s2", lambda self, guest, ranges: None)
    path = tmp_path / "p.txt"
    path.write_text(STALE)
    assert main(["check", "--json", "--no-z3", str(path)]) == 1
    v = json.loads(capsys.readouterr().out)["violation"]
    assert v["invariant"] == "tlb-containment" and v["step"] == 1
    assert v["witness"]["page_owner"] == "g1"


def test_bad_files_give_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("dma device=0x0\n")
    for argv in (["check", str(bad)], ["check", str(tmp_path / "missing")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("vsmmu check: ")
