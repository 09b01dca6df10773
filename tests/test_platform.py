"""The platform description: the default, loading JSON/TOML, round trip, validation."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace

import pytest

from vsmmu.arch.features import Features
from vsmmu.platform import (
    MAX_DEVICES,
    MAX_FILE_BYTES,
    MAX_GUESTS,
    MAX_SMMUS,
    DeviceSpec,
    GuestSpec,
    Platform,
    PlatformError,
    SmmuSpec,
    default_platform,
    dump_platform,
    features_from,
    load_platform,
    platform_from_dict,
)

S0 = SmmuSpec("smmu0", Features())
G0 = GuestSpec("g0")


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def write(tmp_path, name: str, text: str | bytes):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


# --------------------------------------------------------------- the default
def test_default_table():
    p = default_platform()
    assert [s.name for s in p.smmus] == ["smmu0", "smmu1"]
    assert all(s.features == Features() for s in p.smmus)
    assert [(g.name, g.ram_mib) for g in p.guests] == [("g0", 16), ("g1", 16)]
    assert [(d.name, d.smmu, d.sid, d.guest, d.vsid, d.ats) for d in p.devices] == [
        ("nic0", "smmu0", 0x10, "g0", 0, False),
        ("nic1", "smmu0", 0x11, "g1", 0, False),
        ("hypdma", "smmu0", 0x12, None, None, False),
        ("disk0", "smmu0", 0x13, "g0", 1, False),
        ("gpu0", "smmu1", 0x10, "g1", 0, True),
        ("nvme0", "smmu1", 0x20, "g0", 0, False),
    ]


def test_default_vsid_maps():
    p = default_platform()
    assert p.vsid_map("g0", "smmu0") == {0: 0x10, 1: 0x13}
    assert p.vsid_map("g0", "smmu1") == {0: 0x20}
    assert p.vsid_map("g1", "smmu0") == {0: 0x11}
    assert p.vsid_map("g1", "smmu1") == {0: 0x10}


def test_default_psid_overlaps_across_smmus_for_different_guests():
    p = default_platform()
    assert p.psid_owner("smmu0", 0x10) == ("g0", 0)
    assert p.psid_owner("smmu1", 0x10) == ("g1", 0)
    assert p.psid_owner("smmu0", 0x12) is None  # the hypervisor's
    assert p.psid_owner("smmu1", 0x11) is None  # no such device
    assert p.psid_owner("smmu0", 0x13) == ("g0", 1)
    assert sum(d.ats for d in p.devices) == 1


def test_lookups():
    p = default_platform()
    assert p.smmu("smmu1").name == "smmu1"
    assert p.guest("g1").ram_mib == 16
    assert p.device("gpu0").ats
    assert [d.name for d in p.devices_of("g0")] == ["nic0", "disk0", "nvme0"]
    assert [d.name for d in p.devices_of("g1")] == ["nic1", "gpu0"]
    for call in (lambda: p.smmu("smmu7"), lambda: p.guest("g9"),
                 lambda: p.vsid_map("g0", "smmu9"), lambda: p.psid_owner("nope", 0)):
        with pytest.raises(PlatformError, match="no (smmu|guest) '"):
            call()


def test_platform_is_hashable_and_equal_to_itself_rebuilt():
    p = default_platform()
    assert p == default_platform() and hash(p) == hash(default_platform())


# --------------------------------------------------------------- vSID filling
def test_missing_vsids_take_lowest_free_in_declaration_order():
    p = Platform(
        smmus=(S0, SmmuSpec("smmu1")),
        guests=(G0, GuestSpec("g1")),
        devices=(
            DeviceSpec("a", "smmu0", 0x100, "g0"),
            DeviceSpec("b", "smmu0", 0x101, "g0", vsid=0),
            DeviceSpec("c", "smmu0", 0x102, "g0"),
            DeviceSpec("d", "smmu0", 0x103, "g0", vsid=2),
            DeviceSpec("e", "smmu0", 0x104, "g0"),
            DeviceSpec("f", "smmu1", 0x100, "g0"),
            DeviceSpec("g", "smmu0", 0x105, "g1"),
            DeviceSpec("h", "smmu0", 0x106, None),
        ),
    )
    assert p.vsid_map("g0", "smmu0") == {0: 0x101, 1: 0x100, 2: 0x103, 3: 0x102, 4: 0x104}
    assert p.vsid_map("g0", "smmu1") == {0: 0x100}
    assert p.vsid_map("g1", "smmu0") == {0: 0x105}
    assert p.vsid_map("g1", "smmu1") == {}
    assert p.device("h").vsid is None


def test_filled_vsids_compare_equal_to_explicit_ones():
    explicit = default_platform()
    implicit = replace(explicit, devices=tuple(replace(d, vsid=None) for d in explicit.devices))
    assert implicit == explicit


# ------------------------------------------------------------------- loading
TOML = """\
[[smmu]]
name = "smmu0"
features = { ssidsize = 4, oas_bits = 44, granules = [4096], ats = false }

[[smmu]]
name = "smmu1"

[[guest]]
name = "g0"
ram_mib = 32

[[guest]]
name = "g1"
sw_msi_start = 0x2000_0000
sw_msi_size_mib = 2

[[device]]
name = "nic0"
smmu = "smmu0"
sid = 0x10
guest = "g0"

[[device]]
name = "nic1"
smmu = "smmu1"
sid = 0x10
guest = "g1"
vsid = 7
ats = true

[[device]]
name = "hyp"
smmu = "smmu0"
sid = 0x11
"""

EXPECTED = Platform(
    smmus=(
        SmmuSpec("smmu0", Features(ssidsize=4, oas_bits=44, granules=frozenset({4096}),
                                   ats=False)),
        SmmuSpec("smmu1", Features()),
    ),
    guests=(GuestSpec("g0", 32), GuestSpec("g1", 16, "smmuv3", 0x2000_0000, 2)),
    devices=(
        DeviceSpec("nic0", "smmu0", 0x10, "g0", 0),
        DeviceSpec("nic1", "smmu1", 0x10, "g1", 7, ats=True),
        DeviceSpec("hyp", "smmu0", 0x11),
    ),
)


def test_load_toml(tmp_path):
    assert load_platform(write(tmp_path, "p.toml", TOML)) == EXPECTED


def test_load_json_with_hex_strings(tmp_path):
    doc = {
        "smmu": [{"name": "smmu0", "features": {"ssidsize": 4, "oas_bits": 44,
                                                "granules": [4096], "ats": False}},
                 {"name": "smmu1"}],
        "guest": [{"name": "g0", "ram_mib": 32},
                  {"name": "g1", "sw_msi_start": "0x20000000", "sw_msi_size_mib": 2}],
        "device": [
            {"name": "nic0", "smmu": "smmu0", "sid": "0x10", "guest": "g0"},
            {"name": "nic1", "smmu": "smmu1", "sid": 16, "guest": "g1", "vsid": "0X7",
             "ats": True},
            {"name": "hyp", "smmu": "smmu0", "sid": "0x11", "guest": None, "vsid": None},
        ],
    }
    assert load_platform(write(tmp_path, "p.JSON", json.dumps(doc))) == EXPECTED


def test_load_minimal(tmp_path):
    p = load_platform(write(tmp_path, "m.toml", '[[smmu]]\nname = "s"\n'))
    assert p == Platform((SmmuSpec("s"),))


@pytest.mark.parametrize("p", [default_platform(), EXPECTED], ids=["default", "custom"])
def test_round_trip_through_json(tmp_path, p):
    dumped = dump_platform(p)
    assert load_platform(write(tmp_path, "rt.json", json.dumps(dumped))) == p
    assert json.loads(json.dumps(dumped)) == dumped
    assert platform_from_dict(dumped) == p


def test_dump_lists_only_feature_overrides():
    d = dump_platform(EXPECTED)
    assert d["smmu"] == [
        {"name": "smmu0",
         "features": {"ssidsize": 4, "oas_bits": 44, "granules": [4096], "ats": False}},
        {"name": "smmu1"},
    ]
    assert d["device"][2] == {"name": "hyp", "smmu": "smmu0", "sid": 0x11, "ats": False}
    assert [g.get("sw_msi_start") for g in d["guest"]] == [None, 0x2000_0000]


# ------------------------------------------------------ model-level validation
def P(devices=(), guests=(G0,), smmus=(S0,)):
    return Platform(tuple(smmus), tuple(guests), tuple(devices))


@pytest.mark.parametrize("build, expected", [
    (lambda: P(smmus=()), "at least one smmu"),
    (lambda: P(smmus=[SmmuSpec(f"s{i}") for i in range(MAX_SMMUS + 1)]), "too many smmus"),
    (lambda: P(guests=[GuestSpec(f"g{i}") for i in range(MAX_GUESTS + 1)]), "too many guests"),
    (lambda: P([DeviceSpec(f"d{i}", "smmu0", i) for i in range(MAX_DEVICES + 1)]),
     "too many devices"),
    (lambda: P(smmus=(S0, S0)), "smmu 'smmu0': name declared twice"),
    (lambda: P(guests=(G0, GuestSpec("g0", 32))), "guest 'g0': name declared twice"),
    (lambda: P([DeviceSpec("d", "smmu0", 1), DeviceSpec("d", "smmu0", 2)]),
     "device 'd': name declared twice"),
    (lambda: P([DeviceSpec("d", "smmu9", 1)]), "device 'd': smmu 'smmu9' is not declared"),
    (lambda: P([DeviceSpec("d", "smmu0", 1, "g5")]), "device 'd': guest 'g5' is not declared"),
    (lambda: P([DeviceSpec("d", "smmu0", 0x10000)]),
     "device 'd': sid 0x10000 does not fit smmu 'smmu0'"),
    (lambda: P([DeviceSpec("d", "s", 0x40)], smmus=[SmmuSpec("s", Features(sidsize=6))]),
     "device 'd': sid 0x40 does not fit smmu 's' .SIDSIZE 6"),
    (lambda: P([DeviceSpec("a", "smmu0", 5), DeviceSpec("b", "smmu0", 5)]),
     "device 'b': sid 0x5 on smmu 'smmu0' is already used by device 'a'"),
    (lambda: P([DeviceSpec("a", "smmu0", 5, "g0", 3), DeviceSpec("b", "smmu0", 6, "g0", 3)]),
     "device 'b': vsid 0x3 of guest 'g0' on smmu 'smmu0' is already used by device 'a'"),
    (lambda: P([DeviceSpec("d", "s", 5, ats=True)], smmus=[SmmuSpec("s", Features(ats=False))]),
     "device 'd': ats is set but smmu 's' does not implement ATS"),
    (lambda: DeviceSpec("d", "smmu0", 5, "g0", 0x10000), "device 'd': vsid must be 0..0xffff"),
    (lambda: DeviceSpec("d", "smmu0", -1), "device 'd': sid must be 0..0xffffffff"),
    (lambda: DeviceSpec("d", "smmu0", 1, None, 0), "device 'd': vsid 0x0 given but no guest"),
    (lambda: DeviceSpec("d", "smmu0", True), "device 'd': sid must be an integer"),
    (lambda: DeviceSpec("d", "smmu0", 1, ats=1), "device 'd': ats must be a boolean"),
    (lambda: DeviceSpec("Dev", "smmu0", 1), "device 'Dev': name must match"),
    (lambda: GuestSpec("G0"), "guest 'G0': name must match"),
    (lambda: GuestSpec("g" * 33), "guest 'g{33}': name must match"),
    (lambda: GuestSpec("g" * 5000), "guest 'g{40}'[.]{3}: name must match"),
    (lambda: GuestSpec("0g"), "guest '0g': name must match"),
    (lambda: GuestSpec(7), "guest name must be a string"),
    (lambda: GuestSpec("g0", 0), "guest 'g0': ram_mib must be 1..1024, got 0"),
    (lambda: GuestSpec("g0", 1025), "guest 'g0': ram_mib must be 1..1024, got 1025"),
    (lambda: SmmuSpec("s", Features(tlb_entries=1 << 40)),
     "smmu 's': features.tlb_entries must be 1..65536"),
    (lambda: SmmuSpec("s", {"ats": False}), "smmu 's': features must be a Features"),
    (lambda: P([42]), r"platform devices\[0\] must be a DeviceSpec"),
])
def test_model_validation(build, expected):
    with pytest.raises(PlatformError) as e:
        build()
    assert re.search(expected, one_line(e)), str(e.value)


def test_limits_are_reachable():
    P([DeviceSpec(f"d{i}", "smmu0", i) for i in range(MAX_DEVICES)],
      guests=[GuestSpec(f"g{i}", 1024) for i in range(MAX_GUESTS)],
      smmus=[SmmuSpec(f"s{i}") for i in range(MAX_SMMUS - 1)] + [S0])


# ---------------------------------------------------------------- features
@pytest.mark.parametrize("overrides, expected", [
    ({"bogus": 1}, "smmu 'x': unknown feature 'bogus'"),
    ({"ats": 1}, "smmu 'x': features.ats must be a boolean, got integer"),
    ({"sidsize": True}, "smmu 'x': features.sidsize must be an integer, got boolean"),
    ({"sidsize": "16"}, "smmu 'x': features.sidsize must be an integer, got string"),
    ({"cmdqs": 20}, "smmu 'x': features.cmdqs must be 0..19, got 20"),
    ({"config_entries": 0}, "smmu 'x': features.config_entries must be 1..65536"),
    ({"granules": [4096, "16K"]}, "smmu 'x': features.granules must contain only integers"),
    ({"granules": 4096}, "smmu 'x': features.granules must be an array"),
    ({"granules": [8192]}, "smmu 'x': features: granules must be a non-empty subset"),
    ({"oas_bits": 50}, "smmu 'x': features: OAS of 50 bits is not architected"),
    ({"s1p": False, "s2p": False}, "smmu 'x': features: an SMMU implements at least one"),
])
def test_feature_overrides_rejected(overrides, expected):
    with pytest.raises(PlatformError) as e:
        features_from(overrides, "smmu 'x'")
    assert one_line(e).startswith(expected)


def test_feature_overrides_accepted():
    f = features_from({"granules": [4096, 65536], "sidsize": 8, "had": False})
    assert f == Features(granules=frozenset({4096, 65536}), sidsize=8, had=False)


# ------------------------------------------------------------ file validation
BASE = {"smmu": [{"name": "smmu0"}], "guest": [{"name": "g0"}],
        "device": [{"name": "nic0", "smmu": "smmu0", "sid": 16, "guest": "g0"}]}


def with_(path: tuple, value):
    doc = json.loads(json.dumps(BASE))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


@pytest.mark.parametrize("doc, expected", [
    ([], "top level must be a table, got array"),
    (with_(("extra",), 1), "unknown top-level key 'extra'"),
    (with_(("smmu",), {"name": "s"}), "smmu must be an array of tables, got table"),
    (with_(("smmu", 0), "smmu0"), r"smmu\[0\] must be a table, got string"),
    (with_(("smmu", 0, "colour"), "red"), r"smmu\[0\] 'smmu0': unknown key 'colour'"),
    (with_(("guest", 0, "cpus"), 2), r"guest\[0\] 'g0': unknown key 'cpus'"),
    (with_(("device", 0, "irq"), 2), r"device\[0\] 'nic0': unknown key 'irq'"),
    (with_(("device", 0), {"name": "nic0", "sid": 1}), r"device\[0\] 'nic0': missing smmu"),
    (with_(("smmu", 0), {}), r"smmu\[0\]: missing name"),
    (with_(("smmu", 0, "name"), 5), r"smmu\[0\]: name must be a string, got integer"),
    (with_(("smmu", 0, "features"), {"turbo": True}), "smmu 'smmu0': unknown feature 'turbo'"),
    (with_(("smmu", 0, "features"), [1]), "smmu 'smmu0': features must be a table"),
    (with_(("guest", 0, "ram_mib"), "16"), r"guest\[0\] 'g0': ram_mib must be an integer"),
    (with_(("guest", 0, "ram_mib"), 2048), "guest 'g0': ram_mib must be 1..1024"),
    (with_(("device", 0, "sid"), 1.5), r"device\[0\] 'nic0': sid must be an integer or a "
                                       r'"0x.." string, got float'),
    (with_(("device", 0, "sid"), "16"), r"device\[0\] 'nic0': sid must be .* got string '16'"),
    (with_(("device", 0, "sid"), "0x"), r"device\[0\] 'nic0': sid must be"),
    (with_(("device", 0, "sid"), "0x1_0"), r"device\[0\] 'nic0': sid must be"),
    (with_(("device", 0, "sid"), "0x123456789"), r"device\[0\] 'nic0': sid must be"),
    (with_(("device", 0, "sid"), "0x10000"), "device 'nic0': sid 0x10000 does not fit"),
    (with_(("device", 0, "vsid"), [0]), r"device\[0\] 'nic0': vsid must be"),
    (with_(("device", 0, "vsid"), "0x10000"), "device 'nic0': vsid must be 0..0xffff"),
    (with_(("device", 0, "ats"), "yes"), r"device\[0\] 'nic0': ats must be a boolean"),
    (with_(("device", 0, "guest"), 0), r"device\[0\] 'nic0': guest must be a string"),
    (with_(("device", 0, "guest"), "g9"), "device 'nic0': guest 'g9' is not declared"),
    # The MSI window: iommufd SW_MSI_START / SIZE's own checks (EINVAL, EOVERFLOW).
    (with_(("guest", 0, "sw_msi_start"), "0x8001000"),
     "guest 'g0': sw_msi_start must be a multiple of 1 MiB, got 0x8001000"),
    (with_(("guest", 0, "sw_msi_start"), 1.0), r"guest\[0\] 'g0': sw_msi_start must be"),
    (with_(("guest", 0, "sw_msi_size_mib"), 0), "guest 'g0': sw_msi_size_mib must be at least 1"),
    (with_(("guest", 0, "sw_msi_size_mib"), "1"), r"guest\[0\] 'g0': sw_msi_size_mib must be"),
    (with_(("guest", 0, "sw_msi_start"), "0xfffffffffff00000") | {"guest": [{
        "name": "g0", "sw_msi_start": "0xfffffffffff00000", "sw_msi_size_mib": 2}]},
     r"guest 'g0': the MSI window 0xfffffffffff00000 \+ 0x200000 wraps past 2\*\*64"),
    (with_(("device",), [{"name": f"d{i}", "smmu": "smmu0", "sid": i} for i in range(257)]),
     "too many device entries: 257"),
])
def test_file_validation(tmp_path, doc, expected):
    path = write(tmp_path, "bad.json", json.dumps(doc))
    with pytest.raises(PlatformError) as e:
        load_platform(path)
    msg = one_line(e)
    assert msg.startswith(f"platform file {path}: ")
    assert re.search(expected, msg), msg


def test_toml_unknown_key_and_type(tmp_path):
    path = write(tmp_path, "p.toml", TOML.replace('ram_mib = 32', 'ram_mib = 32\nswap = 1'))
    with pytest.raises(PlatformError, match=r"guest\[0\] 'g0': unknown key 'swap'"):
        load_platform(path)
    path = write(tmp_path, "p.toml", TOML.replace("sid = 0x11", 'sid = "0x11"'))
    assert load_platform(path) == EXPECTED  # hex strings work in TOML too
    path = write(tmp_path, "p.toml", TOML.replace("sid = 0x11", "sid = 1979-05-27"))
    with pytest.raises(PlatformError, match=r"device\[2\] 'hyp': sid must be .* got date"):
        load_platform(path)


def test_huge_integers_give_one_line(tmp_path):
    path = write(tmp_path, "p.toml", TOML.replace("sid = 0x11", "sid = 0x" + "f" * 5000))
    with pytest.raises(PlatformError) as e:
        load_platform(path)
    assert len(one_line(e)) < 300 and "sid must be 0..0xffffffff, got huge" in str(e.value)
    path = write(tmp_path, "p.json", json.dumps(BASE).replace("16", "1" * 5000))
    with pytest.raises(PlatformError) as e:
        load_platform(path)
    assert len(one_line(e)) < 400 and "malformed JSON" in str(e.value)


# ------------------------------------------------------------- file handling
def test_oversize_file_rejected_before_parsing(tmp_path):
    path = write(tmp_path, "big.json", b"{" + b" " * MAX_FILE_BYTES + b"}")
    with pytest.raises(PlatformError, match=r"over the 1048576 byte limit"):
        load_platform(path)


def test_file_of_exactly_the_limit_is_parsed(tmp_path):
    text = json.dumps(BASE)
    path = write(tmp_path, "edge.json", text + " " * (MAX_FILE_BYTES - len(text)))
    assert load_platform(path).device("nic0").vsid == 0


@pytest.mark.parametrize("name", ["p.yaml", "p", "p.json.bak", "p.py"])
def test_bad_extension(tmp_path, name):
    path = write(tmp_path, name, json.dumps(BASE))
    with pytest.raises(PlatformError) as e:
        load_platform(path)
    assert one_line(e).startswith(f"platform file {path}: unsupported extension")


@pytest.mark.parametrize("name, text, expected", [
    ("p.json", '{"smmu": [', "malformed JSON: Expecting value"),
    ("p.json", '{"smmu": [], "smmu": []}', "malformed JSON: duplicate key 'smmu'"),
    ("p.json", '{"smmu": NaN}', "malformed JSON: NaN is not allowed"),
    ("p.json", "[" * 100_000, "malformed JSON: nested too deeply"),
    ("p.toml", "[[smmu]\nname = 1", "malformed TOML: "),
    ("p.toml", 'a = "x"\na = "y"', "malformed TOML: "),
    ("p.toml", "a = " + "[" * 100_000, "malformed TOML: "),
    ("p.json", b'{"smmu": "\xff"}', "not UTF-8 text .byte 10."),
])
def test_malformed_syntax(tmp_path, name, text, expected):
    path = write(tmp_path, name, text)
    with pytest.raises(PlatformError) as e:
        load_platform(path)
    msg = one_line(e)
    assert msg.startswith(f"platform file {path}: ")
    assert re.search(expected, msg), msg


def test_file_system_errors(tmp_path):
    with pytest.raises(PlatformError) as e:
        load_platform(tmp_path / "missing.toml")
    assert one_line(e) == f"platform file {tmp_path / 'missing.toml'}: No such file or directory"
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(PlatformError, match="dir.json: not a regular file"):
        load_platform(tmp_path / "dir.json")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_not_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe.toml")
    with pytest.raises(PlatformError, match="not a regular file"):
        load_platform(tmp_path / "pipe.toml")


def test_unprintable_path_is_quoted(tmp_path):
    with pytest.raises(PlatformError) as e:
        load_platform(tmp_path / "a\nb.toml")
    assert "\\n" in one_line(e)
