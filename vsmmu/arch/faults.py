"""A fault is a value: checks build a `Fault`, one encoder writes the record.

`Fault` carries every field an SMMUv3 event record can hold.  A check that
fails raises `FaultError(Fault(...))` with what it knows (a walker knows the
stage, CLASS and IPA but not the stream); the SMMU completes the stream and
access fields with `dataclasses.replace` and encodes the record once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .layouts import EVENT, Event, FaultClass

# Translation faults that honour the R / S2R "record" controls; every other
# event (configuration errors, fetch aborts, external aborts) is always recorded.
RECORD_CONTROLLED = frozenset(
    {Event.F_TRANSLATION, Event.F_ADDR_SIZE, Event.F_ACCESS, Event.F_PERMISSION}
)
# Records describing a transaction carry its address and attributes; those of
# configuration errors leave bits 191:64 RES0 (IHI 0070 §7.3).
TRANSACTION_EVENTS = RECORD_CONTROLLED | {
    Event.F_UUT, Event.F_BAD_ATS_TREQ, Event.F_TRANS_FORBIDDEN, Event.F_WALK_EABT,
    Event.F_TLB_CONFLICT, Event.F_CFG_CONFLICT,
}
# Translation faults also say which stage and which access of the walk (S2, CLASS).
WALK_EVENTS = RECORD_CONTROLLED | {Event.F_WALK_EABT}
FETCH_EVENTS = frozenset({Event.F_STE_FETCH, Event.F_CD_FETCH, Event.F_WALK_EABT})


@dataclass(frozen=True)
class Fault:
    event: Event
    sid: int = 0
    ssid: int | None = None  # SSV=1 when present
    input_addr: int = 0
    ipa: int | None = None  # stage-2 faults: the IPA being translated
    fetch_addr: int | None = None  # F_STE_FETCH, F_CD_FETCH, F_WALK_EABT
    rnw: bool = True  # the faulting transaction was a read
    ind: bool = False  # instruction fetch
    pnu: bool = False  # privileged
    s2: bool = False  # raised by stage 2
    fault_class: FaultClass = FaultClass.IN
    ttrnw: bool = True  # CLASS=TT: the table access was a read (always, we do no HTTU)

    def encode(self) -> int:
        """The 256-bit event record, built from the one EVENT layout."""
        fields = dict(ID=int(self.event), SID=self.sid)
        if self.ssid is not None:
            fields.update(SSV=1, SSID=self.ssid)
        if self.event in TRANSACTION_EVENTS:
            fields.update(INPUT_ADDR=self.input_addr, RNW=int(self.rnw), IND=int(self.ind),
                          PNU=int(self.pnu))
        if self.event in WALK_EVENTS:
            fields.update(S2=int(self.s2), CLASS=int(self.fault_class))
            if self.fault_class == FaultClass.TT:
                fields["TTRNW"] = int(self.ttrnw)
        word = EVENT.encode(**fields)
        if self.fetch_addr is not None:
            word = EVENT["FETCH_ADDR"].put(word, self.fetch_addr & ~7)
        elif self.ipa is not None:
            word = EVENT["IPA"].put(word, self.ipa & ~0xFFF)
        return word

    @classmethod
    def decode(cls, word: int) -> Fault:
        """Parse a record, reading only the fields its event type defines."""
        d = EVENT.decode(word)
        try:
            event = Event(d.ID)
        except ValueError:
            raise ValueError(f"unknown event id {d.ID:#x}") from None
        fault = cls(event=event, sid=d.SID, ssid=d.SSID if d.SSV else None)
        if event in FETCH_EVENTS:
            fault = replace(fault, fetch_addr=d.FETCH_ADDR)
        if event in TRANSACTION_EVENTS:
            fault = replace(fault, input_addr=d.INPUT_ADDR, rnw=bool(d.RNW), ind=bool(d.IND),
                            pnu=bool(d.PNU))
        if event in WALK_EVENTS:
            klass = FaultClass(d.CLASS) if d.CLASS in FaultClass._value2member_map_ else None
            fault = replace(
                fault, s2=bool(d.S2), fault_class=klass if klass is not None else FaultClass.IN,
                ttrnw=bool(d.TTRNW) if klass == FaultClass.TT else True,
                ipa=d.IPA if d.S2 and event not in FETCH_EVENTS else None,
            )
        return fault

    def __str__(self) -> str:
        parts = [self.event.name, f"sid={self.sid:#x}"]
        if self.ssid is not None:
            parts.append(f"ssid={self.ssid:#x}")
        if self.event in TRANSACTION_EVENTS:
            parts += [f"addr={self.input_addr:#x}", "read" if self.rnw else "write"]
        if self.event in WALK_EVENTS:
            parts.append(f"{'S2' if self.s2 else 'S1'} CLASS={self.fault_class.name}")
        if self.ipa is not None:
            parts.append(f"ipa={self.ipa:#x}")
        if self.fetch_addr is not None:
            parts.append(f"fetch={self.fetch_addr:#x}")
        return " ".join(parts)


class FaultError(Exception):
    """A check failed; `fault` is the event it raises (possibly incomplete)."""

    def __init__(self, fault: Fault):
        super().__init__(str(fault))
        self.fault = fault
