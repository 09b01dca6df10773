"""The planted bugs are real: each has a program, written by hand from the bug's
description, that trips the expected invariant with the bug planted and runs
clean on the correct model; together they cover every class of the reference
notes (smmu-anchors.md §6); and planting leaves nothing behind."""

from __future__ import annotations

import pytest

from fuzz.bench.plants import CLASSES, PLANTS, planted
from fuzz.harness import make_runner
from fuzz.physical import STRAY_SID
from fuzz.program import parse
from fuzz.runner import DMA_IOVA, boot, fuzz_platform
from vsmmu.arch.layouts import COMMANDS, REGISTERS, STE, Config, Op
from vsmmu.arch.virtio_layouts import map_req
from vsmmu.hyp.host import GUEST_RAM

CR0 = REGISTERS.index(next(r for r in REGISTERS if r.name == "CR0"))
GBPA = REGISTERS.index(next(r for r in REGISTERS if r.name == "GBPA"))
G1_PAGE_PA = 0x1_0010_2000  # the fuzzing platform's first page of g1's RAM
PAGE_0x20 = GUEST_RAM + 0x20 * 0x1000


def _ste(**fields) -> str:
    return STE.to_bytes(STE.encode(V=1, **fields)).hex()


def _cmd(op: Op, **fields) -> str:
    return COMMANDS[op].encode(OP=op, **fields).to_bytes(16, "little").hex()


def _faults(n: int) -> str:
    """n DMAs of stream 0 (stage 1, CD0.R=1) to an unmapped IOVA: n recorded faults."""
    return "dma device=0x0 iova=0x0 size=0x3 flags=0x0 ssid=0x0\n" * n


def _past_g0_start_table() -> int:
    """The IPA whose start-level (1 GiB) index, unmasked, lands on g1's entry for
    GUEST_RAM: g1's start table follows g0's in the hypervisor's pool."""
    s2 = {name: g.s2 for name, g in boot(monitor=False).hyp.guests.items()}
    return ((s2["g1"].ttb - s2["g0"].ttb) // 8 << 30) + GUEST_RAM


def _req(request: bytes) -> str:
    return request.ljust(72, b"\0").hex()


NIC0_DOMAIN = boot(fuzz_platform("virtio"), monitor=False).domains["nic0"].id


# The fuzzing platform: devices nic0 (g0), nic1 (g1), hypdma, disk0 (g0) behind
# smmu0; gpu0 (g1), nvme0 (g0) behind smmu1.  nic0 and nic1 share ASID 2.
DISABLE_TO_STAGE2 = f"""\
mmio_write guest=0x0 smmu=0x1 reg={GBPA:#x} value=0x80000000
mmio_write guest=0x0 smmu=0x1 reg={CR0:#x} value=0xc
"""
PROGRAMS = {
    "vsid-not-translated": ("cd guest=0x0 device=0x0 ssid=0x0 cd=" + "00" * 64,
                            "cmd-confinement"),
    "vste-s2-fields-leak": (
        f"vste guest=0x0 smmu=0x0 vsid=0x0 ste="
        f"{_ste(CONFIG=Config.S1_TRANS, S1CONTEXTPTR=GUEST_RAM, S2VMID=0x77, S2TTB=G1_PAGE_PA)}",
        "s2-authority"),
    # 257 PREFETCH_CONFIGs in one PROD write: ours takes 64 a trap, the plant all
    "cmdq-unbudgeted": (f"cmd_burst guest=0x0 smmu=0x0 count=0x100 "
                        f"cmd={_cmd(Op.PREFETCH_CONFIG)}", "bounded-trap-work"),
    "vste-bypass-passthrough": (
        f"vste guest=0x0 smmu=0x0 vsid=0x0 ste={_ste(CONFIG=Config.BYPASS)}", "s2-authority"),
    "guest-vmid-passthrough": (f"cmd guest=0x0 smmu=0x0 cmd={_cmd(Op.TLBI_NH_ASID, ASID=2)}",
                               "cmd-confinement"),
    "nsnh-all-global": (f"cmd guest=0x0 smmu=0x0 cmd={_cmd(Op.TLBI_NSNH_ALL)}",
                        "cmd-confinement"),
    "event-psid-leak": ("dma device=0x0 iova=0x0 size=0x3 flags=0x0 ssid=0x0",
                        "event-confinement"),
    "vsmmu-disabled-bypass": (DISABLE_TO_STAGE2, "s2-authority"),
    "forgotten-tlbi": (f"""\
dma device=0x0 iova={DMA_IOVA:#x} size=0x3 flags=0x0 ssid=0x0
reassign guest=0x0 page=0x1a dst=0x1 dst_page=0x0
dma device=0x0 iova={DMA_IOVA:#x} size=0x3 flags=0x1 ssid=0x0
""", "tlb-containment"),
    "s2-unmap-before-sync": (f"""\
dma device=0x0 iova={DMA_IOVA:#x} size=0x3 flags=0x0 ssid=0x0
s2_unmap guest=0x0 page=0x1a
""", "tlb-containment"),
    "deassign-without-quarantine": ("deassign device=0x0", "s2-authority"),
    "torn-ste-update": (f"""\
deassign device=0x0
assign device=0x0 guest=0x1
vste guest=0x1 smmu=0x0 vsid=0x1 ste={_ste(CONFIG=Config.S1_TRANS, S1CONTEXTPTR=GUEST_RAM)}
""", "s2-authority"),
    "iotlb-key-without-vmid": (f"""\
dma device=0x0 iova={DMA_IOVA:#x} size=0x3 flags=0x0 ssid=0x0
dma device=0x1 iova={DMA_IOVA:#x} size=0x3 flags=0x1 ssid=0x0
""", "no-cross-guest-dma"),
    "tlbi-range-num-off-by-one": (DISABLE_TO_STAGE2 + f"""\
dma device=0x5 iova={PAGE_0x20:#x} size=0x3 flags=0x0 ssid=0x0
s2_unmap guest=0x0 page=0x20
""", "tlb-containment"),
    "nested-fetch-skips-s2": (f"""\
vste guest=0x0 smmu=0x0 vsid=0x0 ste={_ste(CONFIG=Config.S1_TRANS, S1CONTEXTPTR=G1_PAGE_PA)}
dma device=0x0 iova={DMA_IOVA:#x} size=0x3 flags=0x0 ssid=0x0
""", "hyp-read-confinement"),
    # g0's stage-2 start table, indexed past its end by IPA bits 40 and up, reaches
    # g1's start table, and through its entry for GUEST_RAM, g1's RAM.
    "s2-input-size-unchecked": (DISABLE_TO_STAGE2 + f"""\
dma device=0x5 iova={_past_g0_start_table():#x} size=0x3 flags=0x1 ssid=0x0
""", "no-cross-guest-dma"),
    "s2aa64-assert": (f"vste guest=0x0 smmu=0x0 vsid=0x1 ste={_ste(CONFIG=Config.S2_TRANS)}\n"
                      "dma device=0x1 iova=0x0 size=0x3 flags=0x0 ssid=0x0", "no-crash"),
    "events-despite-r0": ("dma device=0x0 iova=0x0 size=0x3 flags=0x8 ssid=0x1",
                          "fault-reporting"),
    "stream-table-unbounded": ("dma device=0x6 iova=0x0 size=0x3 flags=0x0 ssid=0x0",
                               "stream-bounds"),
    "cmdq-errors-ignored": ("cmd guest=0x0 smmu=0x0 cmd=ff" + "00" * 15, "queue-protocol"),
    "evtq-wrap-bit": (_faults(8), "fault-reporting"),
    "evtq-overflow-overwrites": (_faults(9), "queue-protocol"),
    # virtio-iommu guests: nic0 (device 0) is g0's endpoint, alone in its boot domain
    "viommu-gpa-unchecked": (f"""\
viommu_req guest=0x0 req={_req(map_req(NIC0_DOMAIN, 0x3000_0000, 0x3000_0FFF, G1_PAGE_PA, 3))} \
len=0x24 in_len=0x4
dma device=0x0 iova=0x30000000 size=0x3 flags=0x1 ssid=0x0
""", "s2-containment"),
    "viommu-unmap-no-tlbi": (f"""\
dma device=0x0 iova={DMA_IOVA:#x} size=0x3 flags=0x1 ssid=0x0
viommu_unmap guest=0x0 domain={NIC0_DOMAIN:#x} iova={DMA_IOVA:#x} pages=0x3
""", "unmap-completion"),
    "viommu-bypass-without-feature": (
        f"viommu_attach guest=0x0 device=0x0 domain={NIC0_DOMAIN:#x} flags=0x2", "s2-authority"),
    # the first mapping is covered whole, the boot buffer's would be split
    "viommu-split-unmap-partial": (f"""\
viommu_map guest=0x0 domain={NIC0_DOMAIN:#x} iova=0xfff0000 pages=0x0 page=0x0 flags=0x3
viommu_unmap guest=0x0 domain={NIC0_DOMAIN:#x} iova=0xfff0000 pages=0x10
""", "request-atomicity"),
}


def test_every_plant_has_a_program_and_every_class_a_plant():
    assert set(PROGRAMS) == set(PLANTS)
    assert {p.cls for p in PLANTS.values()} == set(CLASSES)
    assert len(PLANTS) >= 15


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_plant_is_found_by_its_program_and_the_correct_model_is_clean(name):
    plant, (text, invariant) = PLANTS[name], PROGRAMS[name]
    ops = parse(text)
    with planted(name):
        result = make_runner(plant.target).run(ops)
    assert result.violation is not None, f"{name}: not found"
    assert result.violation.invariant == invariant, str(result.violation)
    assert make_runner(plant.target).run(ops).violation is None


def test_a_page_freed_before_its_sync_is_seen_only_because_the_smmu_lags():
    """The physical SMMUs consume commands on ticks (vsmmu/hyp/host.py
    PHYS_CMDS_PER_TICK): the unsynced TLBI is still queued when the page is freed.
    An SMMU that consumed on the doorbell would have hidden the missing sync."""
    ops = parse(PROGRAMS["s2-unmap-before-sync"][0])
    with planted("s2-unmap-before-sync"):
        v = make_runner("system").run(ops).violation
        assert v is not None and v.invariant == "tlb-containment" and v.step == 1
        assert v.witness["page_owner"] == "free"
        instant = make_runner("system")
        for phys in instant.template.hyp.smmus.values():
            phys.smmu.cmdq_on_doorbell, phys.smmu.cmdq_budget = True, 1024
        assert instant.run(ops).violation is None


def test_the_stray_stream_is_beyond_the_rigs_stream_table():
    assert STRAY_SID == 8


def test_planting_is_undone_and_unknown_names_are_refused():
    text, _ = PROGRAMS["iotlb-key-without-vmid"]
    with planted("iotlb-key-without-vmid,forgotten-tlbi"):
        pass
    assert make_runner("system").run(parse(text)).violation is None
    with pytest.raises(ValueError, match="unknown planted bug 'nope'"):
        planted("nope")
