"""The one description of the system being modelled: physical SMMUs, guests and devices.

A `Platform` says which physical SMMUs exist (and what each implements), which
guests run, and which DMA-capable device sits behind which SMMU at which
physical StreamID (pSID), assigned to which guest at boot and shown to that
guest as which virtual StreamID (vSID).  Each guest sees one vSMMU per physical
SMMU (N:N), so a vSID is only meaningful together with the SMMU it belongs to,
and equal pSIDs behind different SMMUs are different streams.

Every value is checked when it is built, whoever builds it (the loader, a
fuzzer, a test): a bad description raises `PlatformError`, whose message is
one line naming the offending entry and field.  Sizes are bounded (guests,
SMMUs, devices, RAM, cache capacities) so a description can never ask for
unbounded memory.

Files (`load_platform`) are untrusted data: JSON or TOML, at most 1 MiB, parsed
as data only, every key and type checked.  The schema, in TOML::

    design = "vsmmu"                             # optional: the vSMMU design under
                                                 # test (vsmmu/hyp/designs/)
    [[smmu]]
    name = "smmu0"
    features = { ssidsize = 8, oas_bits = 48 }   # optional Features overrides
    [[guest]]
    name = "g0"
    ram_mib = 16                                 # optional, 1..1024
    viommu = "smmuv3"                            # optional: or "virtio" (virtio-iommu)
    sw_msi_start = 0x8000000                     # optional: its reserved MSI window, as
    sw_msi_size_mib = 1                          # iommufd's IOMMU_OPTION_SW_MSI_START/SIZE
    [[device]]
    name = "nic0"
    smmu = "smmu0"
    sid = 0x10                                   # JSON: 16 or "0x10"
    guest = "g0"                                 # optional: unassigned (hypervisor's)
    vsid = 0                                     # optional: lowest free in (guest, smmu)
    ats = false                                  # optional

`dump_platform` writes the same schema back; `load` of its JSON gives an equal
`Platform`.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .arch.features import Features

__all__ = [
    "MAX_DEVICES", "MAX_FILE_BYTES", "MAX_GUESTS", "MAX_SMMUS", "VSID_BITS",
    "DeviceSpec", "GuestSpec", "Platform", "PlatformError", "SmmuSpec",
    "default_platform", "dump_platform", "features_from", "load_platform",
    "platform_from_bytes", "platform_from_dict",
]

DEFAULT_DESIGN = "vsmmu"
MAX_SMMUS = 8
MAX_GUESTS = 16
MAX_DEVICES = 256
MAX_FILE_BYTES = 1 << 20
VSID_BITS = 16  # every vSMMU advertises IDR1.SIDSIZE = 16
RAM_MIB = (1, 1024)
# A guest's reserved MSI window, where the hypervisor maps its doorbell: by default
# Linux's arm-smmu-v3 MSI_IOVA_BASE / MSI_IOVA_LENGTH, the window QEMU's nested
# SMMUv3 describes to a guest as an IORT RMR.  A platform may move it, under the
# checks of iommufd's IOMMU_OPTION_SW_MSI_START / SIZE series (v2, Oct 2025,
# 6c36de14...1760487869.git.nicolinc@nvidia.com): start and size in whole MiB, no
# wrap past 2**64; the hypervisor adds its own (capacity.py).
SW_MSI_START, SW_MSI_SIZE_MIB = 0x0800_0000, 1
SW_MSI_ALIGN = 1 << 20
VIOMMUS = ("smmuv3", "virtio")  # what a guest's virtual IOMMU is
MAX_PSID = (1 << 32) - 1  # SIDSIZE is at most 32
NAME_PATTERN = r"[a-z][a-z0-9_-]{0,31}"
_NAME_RE = re.compile(NAME_PATTERN)
_HEX_RE = re.compile(r"0[xX][0-9a-fA-F]{1,8}")  # a StreamID
_HEX64_RE = re.compile(r"0[xX][0-9a-fA-F]{1,16}")  # an address

# Bounds for integer Features, beyond what Features itself checks: the queue
# sizes are the architectural maximum, the cache capacities are what the model
# allocates (entries are created lazily, but a fuzzer must not be able to turn
# off eviction by asking for 2**60 of them).
FEATURE_LIMITS: dict[str, tuple[int, int]] = {
    "sidsize": (0, 32),
    "ssidsize": (0, 20),
    "oas_bits": (32, 52),
    "cmdqs": (0, 19),
    "eventqs": (0, 19),
    "tlb_entries": (1, 65536),
    "config_entries": (1, 65536),
    "iidr": (0, (1 << 32) - 1),
    "aidr_minor": (0, 15),
}
_OTHER_INT_LIMIT = (0, (1 << 32) - 1)  # an int Feature added later without its own bounds


class PlatformError(ValueError):
    """A platform description that cannot be used; the message is one line."""


# ------------------------------------------------------------- message helpers
def _q(value: object) -> str:
    """A value quoted for a one-line message, bounded in length."""
    if isinstance(value, str):
        return repr(value[:40]) + ("..." if len(value) > 40 else "")
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return _num(value)
    return f"<{_type(value)}>"


def _num(v: int, as_hex: bool = False) -> str:
    """An int for a message, even one with thousands of digits."""
    if -(1 << 64) < v < (1 << 64):
        return hex(v) if as_hex else str(v)
    return "-huge" if v < 0 else "huge"


def _type(v: object) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string",
             list: "array", dict: "table", type(None): "null"}
    return names.get(type(v), type(v).__name__)


def _shown_path(p: os.PathLike | str) -> str:
    s = os.fspath(p)
    s = s if isinstance(s, str) else s.decode(errors="replace")
    return s if s.isprintable() else repr(s)


def _check_name(kind: str, name: object) -> None:
    if not isinstance(name, str):
        raise PlatformError(f"{kind} name must be a string, got {_type(name)}")
    if not _NAME_RE.fullmatch(name):
        raise PlatformError(f"{kind} {_q(name)}: name must match {NAME_PATTERN}")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ------------------------------------------------------------------- features
_FEATURE_DEFAULTS = Features()


def _feature_kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, frozenset):
        return "set"
    return "other"


_FEATURE_KINDS = {f.name: _feature_kind(getattr(_FEATURE_DEFAULTS, f.name))
                  for f in fields(Features)}


def _feature_value(who: str, key: str, value: object) -> object:
    """`value` checked (and normalized) for Features field `key`."""
    kind = _FEATURE_KINDS.get(key)
    where = f"{who}: features.{key}" if isinstance(key, str) else f"{who}: features"
    if kind is None:
        known = ", ".join(_FEATURE_KINDS)
        raise PlatformError(f"{who}: unknown feature {_q(key)} (known: {known})")
    if kind == "bool":
        if not isinstance(value, bool):
            raise PlatformError(f"{where} must be a boolean, got {_type(value)}")
        return value
    if kind == "int":
        if not _is_int(value):
            raise PlatformError(f"{where} must be an integer, got {_type(value)}")
        lo, hi = FEATURE_LIMITS.get(key, _OTHER_INT_LIMIT)
        if not lo <= value <= hi:
            raise PlatformError(f"{where} must be {lo}..{hi}, got {_num(value)}")
        return value
    if kind == "set":
        if not isinstance(value, list | tuple | set | frozenset) or len(value) > 8:
            raise PlatformError(f"{where} must be an array of at most 8 integers, "
                                f"got {_type(value)}")
        if not all(_is_int(g) for g in value):
            raise PlatformError(f"{where} must contain only integers")
        return frozenset(value)
    raise PlatformError(f"{where} cannot be set in a platform description")


def _check_features(who: str, features: Features) -> None:
    for f in fields(Features):
        _feature_value(who, f.name, getattr(features, f.name))


def features_from(overrides: Mapping[str, Any], who: str = "smmu") -> Features:
    """`Features(**overrides)` for untrusted overrides; errors name `who` and the key."""
    if not isinstance(overrides, Mapping):
        raise PlatformError(f"{who}: features must be a table, got {_type(overrides)}")
    kwargs = {key: _feature_value(who, key, value) for key, value in overrides.items()}
    try:
        return Features(**kwargs)
    except (ValueError, TypeError) as e:
        raise PlatformError(f"{who}: features: {e}") from None


# ---------------------------------------------------------------------- specs
@dataclass(frozen=True)
class SmmuSpec:
    """A physical SMMU and what it implements."""

    name: str
    features: Features = _FEATURE_DEFAULTS

    def __post_init__(self):
        _check_name("smmu", self.name)
        if not isinstance(self.features, Features):
            raise PlatformError(f"smmu {_q(self.name)}: features must be a Features, "
                                f"got {_type(self.features)}")
        _check_features(f"smmu {_q(self.name)}", self.features)


@dataclass(frozen=True)
class GuestSpec:
    """A guest (VM), its RAM size, and the virtual IOMMU it is given: a vSMMUv3 per
    physical SMMU, or one virtio-iommu device for all its endpoints."""

    name: str
    ram_mib: int = 16
    viommu: str = "smmuv3"
    sw_msi_start: int = SW_MSI_START  # IPA (== IOVA) of its reserved MSI window
    sw_msi_size_mib: int = SW_MSI_SIZE_MIB

    @property
    def msi_window(self) -> tuple[int, int]:
        """(start, size in bytes) of the guest's reserved MSI window."""
        return self.sw_msi_start, self.sw_msi_size_mib * SW_MSI_ALIGN

    def __post_init__(self):
        _check_name("guest", self.name)
        me = f"guest {_q(self.name)}"
        for key in ("sw_msi_start", "sw_msi_size_mib"):
            if not _is_int(getattr(self, key)):
                raise PlatformError(f"{me}: {key} must be an integer, "
                                    f"got {_type(getattr(self, key))}")
        start, size = self.msi_window
        if start < 0 or start % SW_MSI_ALIGN:  # iommufd: EINVAL
            raise PlatformError(f"{me}: sw_msi_start must be a multiple of 1 MiB, "
                                f"got {_num(start, True)}")
        if self.sw_msi_size_mib < 1:  # iommufd takes 0 as "the default"; a file omits it
            raise PlatformError(f"{me}: sw_msi_size_mib must be at least 1 (the doorbell "
                                f"needs a page), got {_num(self.sw_msi_size_mib)}")
        if start + size > 1 << 64:  # iommufd: EOVERFLOW
            raise PlatformError(f"{me}: the MSI window {_num(start, True)} + "
                                f"{_num(size, True)} wraps past 2**64")
        if self.viommu not in VIOMMUS:
            raise PlatformError(f"guest {_q(self.name)}: viommu must be one of "
                                f"{', '.join(VIOMMUS)}, got {self.viommu!r}")
        lo, hi = RAM_MIB
        if not _is_int(self.ram_mib):
            raise PlatformError(f"guest {_q(self.name)}: ram_mib must be an integer, "
                                f"got {_type(self.ram_mib)}")
        if not lo <= self.ram_mib <= hi:
            raise PlatformError(f"guest {_q(self.name)}: ram_mib must be {lo}..{hi}, "
                                f"got {_num(self.ram_mib)}")


@dataclass(frozen=True)
class DeviceSpec:
    """A DMA-capable device: the physical SMMU it sits behind and its pSID there.

    `guest` is the guest it is assigned to at boot (None: the hypervisor's);
    `vsid` is the StreamID that guest's vSMMU for `smmu` shows it as (None with a
    guest: the lowest free one, filled in by `Platform`).
    """

    name: str
    smmu: str
    sid: int
    guest: str | None = None
    vsid: int | None = None
    ats: bool = False

    def __post_init__(self):
        _check_name("device", self.name)
        me = f"device {_q(self.name)}"
        if not isinstance(self.smmu, str):
            raise PlatformError(f"{me}: smmu must be a string, got {_type(self.smmu)}")
        if self.guest is not None and not isinstance(self.guest, str):
            raise PlatformError(f"{me}: guest must be a string or None, "
                                f"got {_type(self.guest)}")
        if not _is_int(self.sid):
            raise PlatformError(f"{me}: sid must be an integer, got {_type(self.sid)}")
        if not 0 <= self.sid <= MAX_PSID:
            raise PlatformError(f"{me}: sid must be 0..{MAX_PSID:#x}, "
                                f"got {_num(self.sid, True)}")
        if self.vsid is not None:
            if not _is_int(self.vsid):
                raise PlatformError(f"{me}: vsid must be an integer or None, "
                                    f"got {_type(self.vsid)}")
            if not 0 <= self.vsid < 1 << VSID_BITS:
                raise PlatformError(
                    f"{me}: vsid must be 0..{(1 << VSID_BITS) - 1:#x} (the vSMMU advertises "
                    f"{VSID_BITS}-bit StreamIDs), got {_num(self.vsid, True)}")
            if self.guest is None:
                raise PlatformError(f"{me}: vsid {self.vsid:#x} given but no guest")
        if not isinstance(self.ats, bool):
            raise PlatformError(f"{me}: ats must be a boolean, got {_type(self.ats)}")


# ------------------------------------------------------------------- platform
def _as_specs(what: str, items: object, cls: type, limit: int) -> tuple:
    if not isinstance(items, list | tuple):
        raise PlatformError(f"platform {what} must be a tuple of {cls.__name__}, "
                            f"got {_type(items)}")
    if len(items) > limit:
        raise PlatformError(f"too many {what}: {len(items)} (at most {limit})")
    for i, item in enumerate(items):
        if not isinstance(item, cls):
            raise PlatformError(f"platform {what}[{i}] must be a {cls.__name__}, "
                                f"got {_type(item)}")
    return tuple(items)


@dataclass(frozen=True)
class Platform:
    """SMMUs, guests and devices, cross-checked; every assigned device has its vSID.

    Constructing one validates it and fills in missing vSIDs (lowest free vSID
    of the device's (guest, smmu) pair, in declaration order), so two platforms
    that differ only in vSIDs left to that rule compare equal.
    """

    smmus: tuple[SmmuSpec, ...]
    guests: tuple[GuestSpec, ...] = ()
    devices: tuple[DeviceSpec, ...] = ()
    # The vSMMU design every guest's vSMMUs follow (vsmmu/hyp/designs/: the
    # hypervisor checks the name when it boots the platform).
    design: str = DEFAULT_DESIGN

    def __post_init__(self):
        if not isinstance(self.design, str):
            raise PlatformError(f"design must be a string, got {_type(self.design)}")
        if not _NAME_RE.fullmatch(self.design):
            raise PlatformError(f"design must be a name, got {_q(self.design)}")
        smmus = _as_specs("smmus", self.smmus, SmmuSpec, MAX_SMMUS)
        guests = _as_specs("guests", self.guests, GuestSpec, MAX_GUESTS)
        devices = _as_specs("devices", self.devices, DeviceSpec, MAX_DEVICES)
        if not smmus:
            raise PlatformError("a platform needs at least one smmu")

        by_smmu = _unique("smmu", smmus)
        by_guest = _unique("guest", guests)
        _unique("device", devices)

        psid_user: dict[tuple[str, int], DeviceSpec] = {}
        vsid_user: dict[tuple[str, str, int], DeviceSpec] = {}
        for d in devices:
            me = f"device {_q(d.name)}"
            smmu = by_smmu.get(d.smmu)
            if smmu is None:
                raise PlatformError(f"{me}: smmu {_q(d.smmu)} is not declared")
            if d.guest is not None and d.guest not in by_guest:
                raise PlatformError(f"{me}: guest {_q(d.guest)} is not declared")
            sidsize = smmu.features.sidsize
            if d.sid >> sidsize:
                raise PlatformError(f"{me}: sid {d.sid:#x} does not fit smmu {_q(d.smmu)} "
                                    f"(SIDSIZE {sidsize}: sids below {1 << sidsize:#x})")
            if d.ats and not smmu.features.ats:
                raise PlatformError(f"{me}: ats is set but smmu {_q(d.smmu)} "
                                    "does not implement ATS")
            other = psid_user.setdefault((d.smmu, d.sid), d)
            if other.name != d.name:
                raise PlatformError(f"{me}: sid {d.sid:#x} on smmu {_q(d.smmu)} is already "
                                    f"used by device {_q(other.name)}")
            if d.guest is not None and d.vsid is not None:
                other = vsid_user.setdefault((d.guest, d.smmu, d.vsid), d)
                if other.name != d.name:
                    raise PlatformError(
                        f"{me}: vsid {d.vsid:#x} of guest {_q(d.guest)} on smmu "
                        f"{_q(d.smmu)} is already used by device {_q(other.name)}")

        resolved = []
        for d in devices:
            if d.guest is not None and d.vsid is None:
                vsid = 0
                while (d.guest, d.smmu, vsid) in vsid_user:
                    vsid += 1  # at most MAX_DEVICES steps: always below 2**16
                vsid_user[(d.guest, d.smmu, vsid)] = d
                d = DeviceSpec(d.name, d.smmu, d.sid, d.guest, vsid, d.ats)
            resolved.append(d)
        devices = tuple(resolved)

        object.__setattr__(self, "smmus", smmus)
        object.__setattr__(self, "guests", guests)
        object.__setattr__(self, "devices", devices)
        # Lookup indexes: plain attributes, not dataclass fields (not in eq/hash/repr).
        object.__setattr__(self, "_smmu_by_name", by_smmu)
        object.__setattr__(self, "_guest_by_name", by_guest)
        object.__setattr__(self, "_device_by_name", {d.name: d for d in devices})
        object.__setattr__(self, "_by_psid", {(d.smmu, d.sid): d for d in devices})

    # ------------------------------------------------------------- lookups
    def smmu(self, name: str) -> SmmuSpec:
        """The SMMU called `name`; PlatformError if there is none."""
        try:
            return self._smmu_by_name[name]
        except (KeyError, TypeError):
            raise PlatformError(f"no smmu {_q(name)} in this platform "
                                f"(have: {', '.join(self._smmu_by_name)})") from None

    def guest(self, name: str) -> GuestSpec:
        """The guest called `name`; PlatformError if there is none."""
        try:
            return self._guest_by_name[name]
        except (KeyError, TypeError):
            raise PlatformError(f"no guest {_q(name)} in this platform "
                                f"(have: {', '.join(self._guest_by_name)})") from None

    def device(self, name: str) -> DeviceSpec:
        """The device called `name`; PlatformError if there is none."""
        try:
            return self._device_by_name[name]
        except (KeyError, TypeError):
            raise PlatformError(f"no device {_q(name)} in this platform") from None

    def devices_of(self, guest: str) -> tuple[DeviceSpec, ...]:
        """The devices assigned to `guest` at boot, in declaration order."""
        self.guest(guest)
        return tuple(d for d in self.devices if d.guest == guest)

    def vsid_map(self, guest: str, smmu: str) -> dict[int, int]:
        """vSID -> pSID of the vSMMU that `guest` sees for physical SMMU `smmu`, by vSID."""
        self.guest(guest)
        self.smmu(smmu)
        pairs = sorted((d.vsid, d.sid) for d in self.devices
                       if d.guest == guest and d.smmu == smmu)
        return dict(pairs)

    def psid_owner(self, smmu: str, psid: int) -> tuple[str, int] | None:
        """(guest, vSID) of pSID `psid` behind `smmu`; None if no device or unassigned."""
        self.smmu(smmu)
        d = self._by_psid.get((smmu, psid))
        if d is None or d.guest is None:
            return None
        return d.guest, d.vsid


def _unique(kind: str, specs: tuple) -> dict:
    index: dict = {}
    for s in specs:
        if s.name in index:
            raise PlatformError(f"{kind} {_q(s.name)}: name declared twice")
        index[s.name] = s
    return index


# -------------------------------------------------------------------- default
def default_platform() -> Platform:
    """The embedded platform used when none is given.

    Two guests on two physical SMMUs, with pSID 0x10 present behind both SMMUs
    for different guests (g0 on smmu0, g1 on smmu1), so a vSMMU that confuses
    SMMUs hands one guest the other's device; each guest's vSIDs start at 0 per
    SMMU, and one device is the hypervisor's.

    ======  =====  ====  =====  ====  ===
    device  smmu   sid   guest  vsid  ats
    ======  =====  ====  =====  ====  ===
    nic0    smmu0  0x10  g0     0
    nic1    smmu0  0x11  g1     0
    hypdma  smmu0  0x12  -      -
    disk0   smmu0  0x13  g0     1
    gpu0    smmu1  0x10  g1     0     yes
    nvme0   smmu1  0x20  g0     0
    ======  =====  ====  =====  ====  ===
    """
    return Platform(
        smmus=(SmmuSpec("smmu0", Features()), SmmuSpec("smmu1", Features())),
        guests=(GuestSpec("g0", 16), GuestSpec("g1", 16)),
        devices=(
            DeviceSpec("nic0", "smmu0", 0x10, "g0", 0),
            DeviceSpec("nic1", "smmu0", 0x11, "g1", 0),
            DeviceSpec("hypdma", "smmu0", 0x12, None, None),
            DeviceSpec("disk0", "smmu0", 0x13, "g0", 1),
            DeviceSpec("gpu0", "smmu1", 0x10, "g1", 0, ats=True),
            DeviceSpec("nvme0", "smmu1", 0x20, "g0", 0),
        ),
    )


# ------------------------------------------------------- schema (dict) layer
_TOP_KEYS = ("smmu", "guest", "device", "design")
_ENTRY_KEYS = {
    "smmu": (("name",), ("features",)),
    "guest": (("name",), ("ram_mib", "viommu", "sw_msi_start", "sw_msi_size_mib")),
    "device": (("name", "smmu", "sid"), ("guest", "vsid", "ats")),
}
_LIMITS = {"smmu": MAX_SMMUS, "guest": MAX_GUESTS, "device": MAX_DEVICES}


def _entries(data: Mapping, kind: str) -> list[tuple[str, dict]]:
    items = data.get(kind, [])
    if not isinstance(items, list):
        raise PlatformError(f"{kind} must be an array of tables, got {_type(items)}")
    if len(items) > _LIMITS[kind]:
        raise PlatformError(f"too many {kind} entries: {len(items)} "
                            f"(at most {_LIMITS[kind]})")
    required, optional = _ENTRY_KEYS[kind]
    out = []
    for i, entry in enumerate(items):
        label = f"{kind}[{i}]"
        if not isinstance(entry, dict):
            raise PlatformError(f"{label} must be a table, got {_type(entry)}")
        if isinstance(entry.get("name"), str):
            label += f" {_q(entry['name'])}"
        for key in entry:
            if key not in required and key not in optional:
                raise PlatformError(f"{label}: unknown key {_q(key)} "
                                    f"(expected {', '.join(required + optional)})")
        for key in required:
            if key not in entry:
                raise PlatformError(f"{label}: missing {key}")
        out.append((label, entry))
    return out


def _str(label: str, entry: dict, key: str, optional: bool = False) -> str | None:
    v = entry.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str):
        raise PlatformError(f"{label}: {key} must be a string, got {_type(v)}")
    return v


def _int(label: str, entry: dict, key: str, hex_ok: bool = False, hex_re=_HEX_RE) -> int:
    v = entry[key]
    if _is_int(v):
        return v
    if hex_ok and isinstance(v, str) and hex_re.fullmatch(v):
        return int(v, 16)
    allowed = 'an integer or a "0x.." string' if hex_ok else "an integer"
    shown = f" {_q(v)}" if isinstance(v, str) else ""
    raise PlatformError(f"{label}: {key} must be {allowed}, got {_type(v)}{shown}")


def platform_from_dict(data: object) -> Platform:
    """A Platform from the file schema, already parsed into dicts and lists."""
    if not isinstance(data, dict):
        raise PlatformError(f"top level must be a table, got {_type(data)}")
    for key in data:
        if key not in _TOP_KEYS:
            raise PlatformError(f"unknown top-level key {_q(key)} "
                                f"(expected {', '.join(_TOP_KEYS)})")
    smmu_entries = _entries(data, "smmu")
    guest_entries = _entries(data, "guest")
    device_entries = _entries(data, "device")

    smmus = []
    for label, e in smmu_entries:
        name = _str(label, e, "name")
        features = features_from(e.get("features", {}), f"smmu {_q(name)}")
        smmus.append(SmmuSpec(name, features))
    guests = []
    for label, e in guest_entries:
        ram = _int(label, e, "ram_mib") if "ram_mib" in e else 16
        viommu = _str(label, e, "viommu") if "viommu" in e else "smmuv3"
        start = (_int(label, e, "sw_msi_start", hex_ok=True, hex_re=_HEX64_RE)
                 if "sw_msi_start" in e else SW_MSI_START)
        size = _int(label, e, "sw_msi_size_mib") if "sw_msi_size_mib" in e else SW_MSI_SIZE_MIB
        guests.append(GuestSpec(_str(label, e, "name"), ram, viommu, start, size))
    devices = []
    for label, e in device_entries:
        vsid = None if e.get("vsid") is None else _int(label, e, "vsid", hex_ok=True)
        ats = e.get("ats", False)
        if not isinstance(ats, bool):
            raise PlatformError(f"{label}: ats must be a boolean, got {_type(ats)}")
        devices.append(DeviceSpec(
            _str(label, e, "name"), _str(label, e, "smmu"), _int(label, e, "sid", hex_ok=True),
            _str(label, e, "guest", optional=True), vsid, ats))
    return Platform(tuple(smmus), tuple(guests), tuple(devices),
                    data.get("design", DEFAULT_DESIGN))


def dump_platform(p: Platform) -> dict:
    """`p` in the file schema (JSON-ready; no nulls, so TOML-ready too)."""
    smmus = []
    for s in p.smmus:
        entry: dict[str, Any] = {"name": s.name}
        overrides = {}
        for f in fields(Features):
            value = getattr(s.features, f.name)
            if value != getattr(_FEATURE_DEFAULTS, f.name):
                overrides[f.name] = sorted(value) if isinstance(value, frozenset) else value
        if overrides:
            entry["features"] = overrides
        smmus.append(entry)
    devices = []
    for d in p.devices:
        entry = {"name": d.name, "smmu": d.smmu, "sid": d.sid}
        if d.guest is not None:
            entry["guest"] = d.guest
            entry["vsid"] = d.vsid
        entry["ats"] = d.ats
        devices.append(entry)
    design = {} if p.design == DEFAULT_DESIGN else {"design": p.design}
    return {
        **design,
        "smmu": smmus,
        "guest": [_dump_guest(g) for g in p.guests],
        "device": devices,
    }


def _dump_guest(g: GuestSpec) -> dict:
    entry: dict[str, Any] = {"name": g.name, "ram_mib": g.ram_mib, "viommu": g.viommu}
    if g.msi_window != GuestSpec(g.name).msi_window:
        entry.update(sw_msi_start=g.sw_msi_start, sw_msi_size_mib=g.sw_msi_size_mib)
    return entry


# ----------------------------------------------------------------------- files
def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {_q(key)}")
        out[key] = value
    return out


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def _read_bounded(path: Path) -> bytes:
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise PlatformError("not a regular file")
    if st.st_size > MAX_FILE_BYTES:
        raise PlatformError(f"{st.st_size} bytes, over the {MAX_FILE_BYTES} byte limit")
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:  # grew after the stat
        raise PlatformError(f"over the {MAX_FILE_BYTES} byte limit")
    return data


def load_platform(path: str | os.PathLike) -> Platform:
    """The platform described by a `.json` or `.toml` file (untrusted)."""
    where = f"platform file {_shown_path(path)}"
    try:
        p = Path(path)
        ext = p.suffix.lower()
        if ext not in (".json", ".toml"):
            raise PlatformError(f"unsupported extension {_q(p.suffix or '(none)')}; "
                                "use .json or .toml")
        try:
            raw = _read_bounded(p)
        except OSError as e:
            raise PlatformError(e.strerror or type(e).__name__) from None
        return platform_from_bytes(raw, "JSON" if ext == ".json" else "TOML")
    except PlatformError as e:
        raise PlatformError(f"{where}: {e}") from None


def platform_from_bytes(raw: bytes, fmt: str) -> Platform:
    """The platform in a file's bytes, `fmt` "JSON" or "TOML" (untrusted)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PlatformError(f"not UTF-8 text (byte {e.start})") from None
    try:
        if fmt == "JSON":
            data = json.loads(text, object_pairs_hook=_no_duplicate_keys,
                              parse_constant=_no_constant)
        else:
            data = tomllib.loads(text)
    except RecursionError:
        raise PlatformError(f"malformed {fmt}: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, TOMLDecodeError, int digit limit
        msg = " ".join(str(e).split())[:200]
        raise PlatformError(f"malformed {fmt}: {msg}") from None
    return platform_from_dict(data)
