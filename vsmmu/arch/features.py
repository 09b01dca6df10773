"""What an SMMU implements, and the ID register values that advertise it.

The model's behaviour is driven by these features (a stage the SMMU lacks
makes an STE that enables it ILLEGAL; a command for a missing feature is
CERROR_ILL), and software discovers them only through IDR0-5.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .layouts import PA_BITS, REG

_OAS_ENC = {bits: enc for enc, bits in PA_BITS.items()}
STALL_MODEL = 0b01  # IDR0.STALL_MODEL: terminate only, stalls not supported


@dataclass(frozen=True)
class Features:
    s1p: bool = True
    s2p: bool = True
    asid16: bool = True
    vmid16: bool = True
    sidsize: int = 16  # StreamID bits
    ssidsize: int = 8  # SubstreamID bits (0: no substreams)
    oas_bits: int = 48
    granules: frozenset[int] = field(default_factory=lambda: frozenset({4096, 16384, 65536}))
    st_2lvl: bool = True  # 2-level stream tables
    cd_2lvl: bool = True  # 2-level CD tables
    ril: bool = True  # range invalidation (NUM/SCALE)
    ats: bool = True
    msi: bool = True
    had: bool = True  # hierarchical attribute disable
    xnx: bool = True  # 2-bit stage-2 XN
    cmdqs: int = 19  # max log2 entries of the command queue
    eventqs: int = 19
    tlb_entries: int = 512  # IOTLB capacity
    config_entries: int = 256  # configuration cache capacity
    iidr: int = 0x43B  # implementer code only: ARM (JEP106 0x43B); no errata to match
    aidr_minor: int = 1  # SMMUv3.1

    def __post_init__(self):
        if self.oas_bits not in _OAS_ENC:
            raise ValueError(f"OAS of {self.oas_bits} bits is not architected")
        if not 0 <= self.ssidsize <= 20 or not 0 <= self.sidsize <= 32:
            raise ValueError("SIDSIZE must be 0..32 and SSIDSIZE 0..20")
        if not (self.s1p or self.s2p):
            raise ValueError("an SMMU implements at least one stage")
        if not self.granules or not self.granules <= {4096, 16384, 65536}:
            raise ValueError("granules must be a non-empty subset of 4K, 16K, 64K")

    def id_registers(self) -> dict[str, int]:
        """IDR0-5, IIDR and AIDR as software reads them."""
        idr0 = REG["IDR0"].layout.encode(
            S2P=int(self.s2p), S1P=int(self.s1p), TTF=0b10, COHACC=1,
            ATS=int(self.ats), ASID16=int(self.asid16), MSI=int(self.msi),
            VMID16=int(self.vmid16 and self.s2p), CD2L=int(self.cd_2lvl),
            TTENDIAN=0b10, STALL_MODEL=STALL_MODEL, TERM_MODEL=1, ST_LEVEL=int(self.st_2lvl),
        )
        idr1 = REG["IDR1"].layout.encode(
            SIDSIZE=self.sidsize, SSIDSIZE=self.ssidsize,
            EVENTQS=self.eventqs, CMDQS=self.cmdqs,
        )
        idr3 = REG["IDR3"].layout.encode(HAD=int(self.had), XNX=int(self.xnx), RIL=int(self.ril))
        idr5 = REG["IDR5"].layout.encode(
            OAS=_OAS_ENC[self.oas_bits],
            GRAN4K=int(4096 in self.granules),
            GRAN16K=int(16384 in self.granules),
            GRAN64K=int(65536 in self.granules),
        )
        aidr = REG["AIDR"].layout.encode(ARCHMAJORREV=0, ARCHMINORREV=self.aidr_minor)
        return dict(IDR0=idr0, IDR1=idr1, IDR2=0, IDR3=idr3, IDR4=0, IDR5=idr5,
                    IIDR=self.iidr, AIDR=aidr)

    @property
    def ias_bits(self) -> int:
        """The input address size (IHI 0070 §3.4): MAX(40 if IDR0.TTF[0], OAS if
        TTF[1]); with AArch64 tables only (TTF=0b10) it is the OAS."""
        return self.oas_bits

    def pa_bits(self, enc: int) -> int:
        """An IPS/S2PS encoding, capped to what this SMMU outputs (reserved → OAS)."""
        return min(PA_BITS.get(enc, self.oas_bits), self.oas_bits)
