"""QEMU's SMMUv3 as a differential-testing peer, driven over the qtest protocol.

`QemuPeer` starts `qemu-system-aarch64 -machine virt,iommu=smmuv3` with QEMU's
`edu` PCI device as the DMA master and no guest kernel: one vCPU is parked in
`wfi; b .` (an 8-byte -bios image) under `-icount shift=0,sleep=off`, so the
virtual clock jumps to each timer deadline and the edu DMA (a +100 ms virtual
timer) completes in well under a millisecond of wall time.  Debian builds QEMU
without the qtest accelerator, so there is no `clock_step`; the qtest protocol
server itself works under TCG.  See shared/reference/qemu-peer.md.

Everything is reached through the two ports `vsmmu.sw.driver.SmmuDriver` and
`vsmmu.sw.pagetable.PageTable` expect, so our own encoders program QEMU:
  * `peer.mmio`: the SMMU register page at 0x09050000 (`read(off, size)`,
    `write(off, value, size)`);
  * `peer.mem`: guest RAM through qtest `b64read`/`b64write`.
Writes (memory and MMIO) are pipelined in bounded batches; any read flushes
first.  QEMU processes qtest commands in order, so pipelining changes nothing
but speed.  A batch is bounded in commands and bytes: with thousands of
commands in flight both socket buffers fill and client and QEMU deadlock.

QEMU is pointed only at a unix socket in a private temporary directory (the
Python side listens, QEMU connects); no network, no disk images.  End of file
on the socket, or a QEMU that stops answering, raises `PeerCrash`.  The peer
is a context manager and always ends the process (SIGTERM: QEMU does not exit
when the qtest socket closes) and removes its directory.
"""

from __future__ import annotations

import base64
import functools
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass

from vsmmu.arch.features import Features
from vsmmu.arch.layouts import PA_BITS, REG

# ------------------------------------------------- the virt machine (hw/arm/virt.c)
SMMU_BASE = 0x0905_0000
SMMU_SIZE = 0x2_0000
ECAM_BASE = 0x40_1000_0000  # high ECAM: bus << 20 | dev << 15 | fn << 12
PCI_MMIO32 = 0x1000_0000  # 32-bit PCI MMIO window, CPU address == PCI address
RAM_BASE = 0x4000_0000
RAM_SIZE = 128 << 20

# ------------------------------------------------------ the edu device (hw/misc/edu.c)
EDU_ID = 0x11E8_1234  # device << 16 | vendor
EDU_DMA_SRC, EDU_DMA_DST, EDU_DMA_CNT, EDU_DMA_CMD = 0x80, 0x88, 0x90, 0x98
EDU_CMD_RUN, EDU_CMD_TO_RAM = 0x1, 0x2
EDU_BUF = 0x4_0000  # device-side address of its DMA buffer
EDU_BUF_SIZE = 4096
# edu calls hw_error() (QEMU aborts) for a DMA outside its buffer; QEMU 7.2's range check
# is off by one and also refuses one that ends exactly at the buffer's end.
EDU_BUF_USABLE = EDU_BUF_SIZE - 4

# AArch64 "wfi; b .-4": the vCPU idles so icount lets the virtual clock jump.
WFI_BIOS = struct.pack("<II", 0xD503_207F, 0x17FF_FFFF)

MAX_BATCH = 64  # pipelined commands per round trip
MAX_BATCH_BYTES = 256 << 10  # and bytes of command text
MAX_B64 = 64 << 10  # bytes per b64write/b64read
REPLAY_POLLS = 64  # extra polls of a finished edu DMA in a recorded script


class PeerError(RuntimeError):
    """QEMU answered a qtest command with something other than OK."""


class PeerCrash(RuntimeError):
    """QEMU died (end of file on the qtest socket) or stopped answering."""

    def __init__(self, what: str, returncode: int | None = None, stderr: str = ""):
        self.what, self.returncode, self.stderr = what, returncode, stderr
        detail = f"{what}; exit status {describe_status(returncode)}"
        last = stderr.strip().splitlines()[-1:] if stderr.strip() else []
        super().__init__(detail + (f"; stderr: {last[0]}" if last else ""))


def describe_status(rc: int | None) -> str:
    if rc is None:
        return "none (still running)"
    if rc < 0:
        try:
            return f"{rc} ({signal.Signals(-rc).name})"
        except ValueError:
            return str(rc)
    return str(rc)


@functools.cache
def qemu_version(binary: str, timeout: float = 20.0) -> tuple[str, tuple[int, ...]]:
    """('QEMU emulator version 10.0.2 (...)', (10, 0, 2)) from `binary --version`."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                         timeout=timeout, stdin=subprocess.DEVNULL, check=False).stdout
    line = out.splitlines()[0] if out else ""
    m = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", line)
    if not m:
        raise PeerError(f"{binary} --version printed no QEMU version: {line!r}")
    return line, tuple(int(g or 0) for g in m.groups())


def features_from_idr(idr: dict[str, int], *, tlb_entries: int = 512) -> Features:
    """What QEMU's ID registers advertise, as a `Features` for our model."""
    def f(reg: str, name: str) -> int:
        return REG[reg].layout.get(idr[reg], name)

    return Features(
        s1p=bool(f("IDR0", "S1P")), s2p=bool(f("IDR0", "S2P")),
        asid16=bool(f("IDR0", "ASID16")), vmid16=bool(f("IDR0", "VMID16")),
        sidsize=f("IDR1", "SIDSIZE"), ssidsize=f("IDR1", "SSIDSIZE"),
        oas_bits=PA_BITS.get(f("IDR5", "OAS"), 48),
        granules=frozenset(g for g, name in ((4096, "GRAN4K"), (16384, "GRAN16K"),
                                             (65536, "GRAN64K")) if f("IDR5", name)),
        st_2lvl=f("IDR0", "ST_LEVEL") == 1, cd_2lvl=bool(f("IDR0", "CD2L")),
        ril=bool(f("IDR3", "RIL")), ats=bool(f("IDR0", "ATS")), msi=bool(f("IDR0", "MSI")),
        had=bool(f("IDR3", "HAD")), xnx=bool(f("IDR3", "XNX")),
        cmdqs=f("IDR1", "CMDQS"), eventqs=f("IDR1", "EVENTQS"), tlb_entries=tlb_entries,
    )


@dataclass(frozen=True)
class EduDma:
    """One completed edu DMA: wall time and how many CMD polls it took."""

    seconds: float
    polls: int


class _MmioPort:
    """The SMMU register page as `SmmuDriver` expects an MMIO port."""

    def __init__(self, peer: QemuPeer, base: int):
        self.peer, self.base = peer, base

    def read(self, offset: int, size: int = 4) -> int:
        return self.peer.read(self.base + offset, size)

    def write(self, offset: int, value: int, size: int = 4) -> None:
        self.peer.write(self.base + offset, value, size)


class _MemPort:
    """Guest RAM as a memory port (`alloc.MemPort`, and `PhysMem`'s shape: the
    optional initiator is accepted and ignored).  Remembers the 4 KiB pages it
    wrote so `QemuPeer.scrub` can zero them for the next test case."""

    def __init__(self, peer: QemuPeer):
        self.peer = peer
        self.dirty: set[int] = set()

    def read(self, addr: int, size: int, initiator: object = None) -> bytes:
        return self.peer.memread(addr, size)

    def write(self, addr: int, data: bytes, initiator: object = None) -> None:
        if data:
            self.dirty.update(range(addr >> 12, (addr + len(data) + 0xFFF) >> 12))
            self.peer.memwrite(addr, data)

    def read_int(self, addr: int, size: int, initiator: object = None) -> int:
        return int.from_bytes(self.read(addr, size), "little")

    def write_int(self, addr: int, value: int, size: int, initiator: object = None) -> None:
        self.write(addr, value.to_bytes(size, "little"))


# QEMU outlives a closed qtest socket, so a diff-qemu killed outright (SIGKILL, a CI
# time-out) would leave it running: util-linux's setpriv makes the kernel kill it
# when the process that spawned it dies (PR_SET_PDEATHSIG; spawn runs on the main
# thread, which lives as long as the process), then execs QEMU in place.
_SETPRIV = shutil.which("setpriv")
_DIE_WITH_US = [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []


def _cleanup(proc: subprocess.Popen | None, sock: socket.socket | None, tmp: str | None) -> None:
    """Last-resort cleanup (also run by the finalizer if `close` never was)."""
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass
    if proc is not None and proc.poll() is None:
        proc.terminate()  # QEMU keeps running when the qtest socket closes; SIGTERM: exit 0
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


# The machine every peer runs: the virt board with its SMMUv3 and an edu device as DMA
# master, deterministic time.
MACHINE_ARGS = ("-machine", "virt,iommu=smmuv3", "-cpu", "cortex-a57", "-m",
                f"{RAM_SIZE >> 20}M", "-icount", "shift=0,sleep=off", "-nodefaults",
                "-display", "none", "-serial", "none",
                "-device", "edu,dma_mask=0xffffffffffffffff")


class QemuPeer:
    """One QEMU process: the virt machine with its SMMUv3 and an edu device."""

    def __init__(self, binary: str = "qemu-system-aarch64", *, timeout: float = 10.0,
                 batch: int = MAX_BATCH, start_timeout: float = 30.0):
        self.binary = binary
        self.timeout = timeout
        self.batch = max(1, batch)
        self.start_timeout = start_timeout
        self.version, self.version_tuple = qemu_version(binary)
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.tmp: str | None = None
        self._finalizer = None
        self._rbuf = b""
        self._pending: list[str] = []
        self._pending_bytes = 0
        self.round_trips = 0
        self.commands = 0
        # Every command sent, in order, and each answer read as a comment: a qtest
        # script that replays the run (fuzz/peers/reproducer.py); None: not kept.
        self.record: list[str] | None = None
        self.mmio = _MmioPort(self, SMMU_BASE)
        self.mem = _MemPort(self)
        self.idr: dict[str, int] = {}
        self.features: Features | None = None
        self.edu_bar = PCI_MMIO32
        self.sid: int | None = None
        self.start_seconds = 0.0
        self._srv: socket.socket | None = None
        self._stderr = None
        self._t0 = 0.0

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> QemuPeer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self.sock is not None

    def start(self) -> QemuPeer:
        """Spawn QEMU, wait for its qtest connection, find and enable the edu device,
        read the SMMU's ID registers.  Raises PeerCrash if QEMU does not come up."""
        return self.spawn().connect()

    def spawn(self) -> QemuPeer:
        """Start the QEMU process without waiting for it (`connect` finishes the start):
        a caller can let the next peer boot while it works with the current one."""
        if self.proc is not None:
            raise RuntimeError("QemuPeer already started")
        self._t0 = time.perf_counter()
        self.tmp = tempfile.mkdtemp(prefix="vsmmu-qemu-")
        sock_path = os.path.join(self.tmp, "qtest.sock")
        bios = os.path.join(self.tmp, "wfi.bin")
        with open(bios, "wb") as f:
            f.write(WFI_BIOS)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            srv.bind(sock_path)
            srv.listen(1)
            args = [self.binary, *MACHINE_ARGS, "-bios", bios, "-qtest", f"unix:{sock_path}",
                    "-qtest-log", "none"]
            self._stderr = open(os.path.join(self.tmp, "stderr"), "w+b")  # noqa: SIM115
            self.proc = subprocess.Popen(_DIE_WITH_US + args, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=self._stderr,
                                         cwd=self.tmp, start_new_session=True)
            self._finalizer = weakref.finalize(self, _cleanup, self.proc, None, self.tmp)
        except BaseException:
            srv.close()
            self.close()
            raise
        self._srv = srv
        return self

    def connect(self) -> QemuPeer:
        """Accept QEMU's qtest connection (see `spawn`) and set the machine up."""
        if self.sock is not None:
            return self
        if self.proc is None:
            self.spawn()
        srv, self._srv = self._srv, None
        try:
            srv.settimeout(0.05)
            deadline = time.monotonic() + self.start_timeout
            while True:
                try:
                    self.sock, _ = srv.accept()
                    break
                except TimeoutError:
                    if self.proc.poll() is not None:
                        raise PeerCrash("QEMU exited before connecting to the qtest socket",
                                        self.proc.returncode, self.stderr_text()) from None
                    if time.monotonic() > deadline:
                        raise PeerCrash("QEMU did not connect to the qtest socket",
                                        None, self.stderr_text()) from None
        except BaseException:
            srv.close()
            self.close()
            raise
        srv.close()
        self.sock.settimeout(self.timeout)
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _cleanup, self.proc, self.sock, self.tmp)
        try:
            self.cmd("endianness")  # answered once machine init is done
            self._setup_edu()
            self.idr = {name: REG[name].read(self.mmio)
                        for name in ("IDR0", "IDR1", "IDR2", "IDR3", "IDR4", "IDR5", "IIDR",
                                     "AIDR")}
            self.features = features_from_idr(self.idr)
        except BaseException:
            self.close()
            raise
        self.start_seconds = time.perf_counter() - self._t0
        return self

    def stderr_text(self) -> str:
        try:
            self._stderr.flush()
            self._stderr.seek(0)
            return self._stderr.read()[-4096:].decode(errors="replace")
        except (AttributeError, OSError, ValueError):
            return ""

    def close(self) -> int | None:
        """Close the socket, end QEMU (SIGTERM, then SIGKILL after 5 s), remove the
        temporary directory.  Idempotent; returns QEMU's exit status when known."""
        rc = None
        for attr in ("_srv", "sock"):
            sock = getattr(self, attr, None)
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
                setattr(self, attr, None)
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()  # closing the qtest socket does not end QEMU
            try:
                rc = self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
        if getattr(self, "_stderr", None) is not None:
            self._stderr.close()
            self._stderr = None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._pending.clear()
        self._pending_bytes = 0
        self._rbuf = b""
        return rc

    def _crash(self, what: str) -> PeerCrash:
        """Build the PeerCrash for a dead or hung QEMU, and reap it."""
        stderr = self.stderr_text()
        rc = None
        if self.proc is not None:
            try:
                rc = self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                what += " (killed)"
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
        self._pending.clear()
        self._pending_bytes = 0
        return PeerCrash(what, rc, stderr)

    # ------------------------------------------------------------ qtest protocol
    def _send(self, text: str) -> None:
        if self.sock is None:
            raise PeerCrash("QEMU is not running", self.proc and self.proc.poll())
        try:
            self.sock.sendall(text.encode())
        except TimeoutError:
            raise self._crash("QEMU stopped reading qtest commands") from None
        except OSError:
            raise self._crash("QEMU closed the qtest socket") from None

    def _line(self) -> str:
        while b"\n" not in self._rbuf:
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                raise self._crash(f"QEMU did not answer within {self.timeout} s") from None
            except OSError:
                raise self._crash("QEMU closed the qtest socket") from None
            if not chunk:
                raise self._crash("QEMU closed the qtest socket")
            self._rbuf += chunk
        line, self._rbuf = self._rbuf.split(b"\n", 1)
        return line.decode(errors="replace")

    def _reply(self, command: str) -> str:
        while True:
            line = self._line()
            if line.startswith("IRQ"):  # only with irq_intercept_*, which we never ask for
                continue
            if line == "OK" or line.startswith("OK "):
                return line[3:]
            raise PeerError(f"qtest {command[:80]!r} -> {line[:200]!r}")

    def flush(self) -> None:
        """Send the pipelined commands and check every reply."""
        if not self._pending:
            return
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        self._send("\n".join(batch) + "\n")
        self.round_trips += 1
        for c in batch:
            self._reply(c)

    def queue(self, command: str) -> None:
        """Pipeline a command whose reply is only checked (a write)."""
        if self.record is not None:
            self.record.append(command)
        self.commands += 1
        self._pending.append(command)
        self._pending_bytes += len(command) + 1
        if len(self._pending) >= self.batch or self._pending_bytes >= MAX_BATCH_BYTES:
            self.flush()

    def cmd(self, command: str) -> str:
        """One command and its reply payload (after any pipelined writes)."""
        self.flush()
        self.commands += 1
        if self.record is not None:
            self.record.append(command)
        self._send(command + "\n")
        self.round_trips += 1
        reply = self._reply(command)
        if self.record is not None:
            self.record.append(f"# QEMU: OK {reply}".rstrip())
        return reply

    # ------------------------------------------------------------ accesses
    _SUFFIX = {1: "b", 2: "w", 4: "l", 8: "q"}

    def read(self, addr: int, size: int = 4) -> int:
        return int(self.cmd(f"read{self._SUFFIX[size]} {addr:#x}"), 16)

    def write(self, addr: int, value: int, size: int = 4) -> None:
        self.queue(f"write{self._SUFFIX[size]} {addr:#x} {value & ((1 << 8 * size) - 1):#x}")

    def memread(self, addr: int, size: int) -> bytes:
        out = bytearray()
        for off in range(0, size, MAX_B64):
            n = min(MAX_B64, size - off)
            out += base64.b64decode(self.cmd(f"b64read {addr + off:#x} {n:#x}"))
        if len(out) != size:
            raise PeerError(f"b64read {addr:#x} {size:#x} returned {len(out)} bytes")
        return bytes(out)

    def memwrite(self, addr: int, data: bytes) -> None:
        for off in range(0, len(data), MAX_B64):
            chunk = data[off : off + MAX_B64]
            self.queue(f"b64write {addr + off:#x} {len(chunk):#x} "
                       f"{base64.b64encode(chunk).decode()}")

    def scrub(self, keep: tuple[tuple[int, int], ...] = ()) -> int:
        """Zero every RAM page written through `mem` since the last scrub, except
        those inside `keep` ((base, size) ranges); returns how many were zeroed."""
        pages = sorted(p for p in self.mem.dirty
                       if RAM_BASE >> 12 <= p < (RAM_BASE + RAM_SIZE) >> 12
                       and not any(b >> 12 <= p < (b + s) >> 12 for b, s in keep))
        self.mem.dirty.clear()
        run_start = prev = None
        for p in [*pages, None]:
            if p is not None and prev is not None and p == prev + 1:
                prev = p
                continue
            if run_start is not None:
                self.memwrite(run_start << 12, bytes((prev - run_start + 1) << 12))
            run_start = prev = p
        self.flush()
        return len(pages)

    # ------------------------------------------------------------ PCI / edu
    @staticmethod
    def ecam(bus: int, dev: int, fn: int, off: int = 0) -> int:
        return ECAM_BASE + (bus << 20) + (dev << 15) + (fn << 12) + off

    def _setup_edu(self) -> None:
        for dev in range(32):
            if self.read(self.ecam(0, dev, 0), 4) == EDU_ID:
                break
        else:
            raise PeerError("no edu device on PCI bus 0")
        self.sid = dev << 3  # iommu-map is the identity: StreamID = RID = devfn on bus 0
        self.write(self.ecam(0, dev, 0, 0x10), self.edu_bar, 4)  # BAR0
        self.write(self.ecam(0, dev, 0, 0x04), 0x0006, 2)  # memory space | bus master
        ident = self.read(self.edu_bar, 4)
        if ident & 0xFF != 0xED:
            raise PeerError(f"edu BAR0 ident reads {ident:#x}")

    def edu_dma(self, src: int, dst: int, count: int, to_ram: bool,
                max_polls: int = 100_000) -> EduDma:
        """Run one edu DMA and wait (bounded) for CMD.RUN to clear.  to_ram: the
        edu buffer (device side `src`) goes to bus address `dst` through the SMMU;
        otherwise bus address `src` goes to the buffer at device side `dst`."""
        dev_side = src if to_ram else dst
        if count <= 0 or dev_side < EDU_BUF or dev_side + count > EDU_BUF + EDU_BUF_USABLE:
            raise ValueError(f"edu DMA of {count} bytes at buffer {dev_side:#x} is outside "
                             "its usable buffer (edu would abort QEMU)")
        bar = self.edu_bar
        self.write(bar + EDU_DMA_SRC, src, 8)
        self.write(bar + EDU_DMA_DST, dst, 8)
        self.write(bar + EDU_DMA_CNT, count, 8)
        self.write(bar + EDU_DMA_CMD, EDU_CMD_RUN | (EDU_CMD_TO_RAM if to_ram else 0), 8)
        t0 = time.perf_counter()
        for polls in range(1, max_polls + 1):
            if not self.read(bar + EDU_DMA_CMD, 8) & EDU_CMD_RUN:
                if self.record is not None:  # a replay may take longer: reads are harmless
                    self.record += [f"# {REPLAY_POLLS} more polls: margin for a slower replay",
                                    *[f"readq {bar + EDU_DMA_CMD:#x}"] * REPLAY_POLLS]
                return EduDma(time.perf_counter() - t0, polls)
        raise self._crash(f"edu DMA still running after {max_polls} polls")

    def dma_to_memory(self, iova: int, buf_off: int, count: int) -> EduDma:
        """Device write: edu buffer[buf_off:+count] -> bus address `iova`."""
        return self.edu_dma(EDU_BUF + buf_off, iova, count, to_ram=True)

    def dma_from_memory(self, iova: int, buf_off: int, count: int) -> EduDma:
        """Device read: bus address `iova` -> edu buffer[buf_off:+count]."""
        return self.edu_dma(iova, EDU_BUF + buf_off, count, to_ram=False)

    # ------------------------------------------------------------ the SMMU
    def smmu_off_bypass(self) -> None:
        """SMMUEN=0 with GBPA.ABORT=0: edu DMAs reach memory untranslated (how the
        edu buffer is loaded and read back).  QEMU 7.2 ignores GBPA and always
        bypasses while disabled."""
        cr0 = REG["CR0"]
        self.mmio.write(cr0.offset, self.mmio.read(cr0.offset) & ~1)
        gbpa = REG["GBPA"]
        self.mmio.write(gbpa.offset, gbpa.layout.encode(UPDATE=1, SHCFG=1))
        self.flush()

    def load_buffer(self, data: bytes, scratch: int) -> None:
        """Fill the edu buffer with `data` (<= 4 KiB) by a bypass DMA from `scratch`
        (a RAM address); leaves the SMMU disabled."""
        self.smmu_off_bypass()
        self.memwrite(scratch, data)
        self.dma_from_memory(scratch, 0, len(data))

    def dump_buffer(self, scratch: int, size: int = EDU_BUF_USABLE) -> bytes:
        """The edu buffer, by a bypass DMA to `scratch`; leaves the SMMU disabled."""
        self.smmu_off_bypass()
        self.dma_to_memory(scratch, 0, size)
        return self.memread(scratch, size)
