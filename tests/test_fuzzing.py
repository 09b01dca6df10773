"""Structure-aware fuzzing: the mutator and crossover, the dictionary, the physical
SMMU checks, the harness scripts under libFuzzer, and campaigns (clean, and against
a model with a bug planted at run time by fuzz/bench/plants.py)."""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import campaign, dictionary, fuzz_command, parsers
from fuzz.campaign import CampaignError, CampaignOptions, merge_corpora, run_campaign
from fuzz.hints import Hints
from fuzz.mutate import SEPARATOR, Generator, Mutator, mutate_field
from fuzz.mutate import SYSTEM as SYSTEM_BIAS
from fuzz.mutate import VIRTIO as VIRTIO_BIAS
from fuzz.physical import PhysicalRunner
from fuzz.program import MAX_OPS, OP_BY_NAME, Op, decode, encode, parse
from fuzz.runner import DMA_IOVA, boot
from fuzz.targets import TARGETS
from properties.violations import FAULT_REPORTING
from vsmmu.arch.layouts import CD, COMMANDS, STE
from vsmmu.arch.layouts import Op as Opcode
from vsmmu.hw.memory import PAGE_SIZE
from vsmmu.hw.smmu import DmaResult, Smmu
from vsmmu.hyp.host import GUEST_RAM

HARNESSES = Path(campaign.__file__).with_name("harnesses")

# nic0 caches the translation of its DMA buffer; the hypervisor balloons the page to g1.
_PAGE = (boot(monitor=False).domains["nic0"].table.translate(DMA_IOVA) - GUEST_RAM) // PAGE_SIZE
STALE_TLB = f"""\
dma device=0x0 iova={DMA_IOVA:#x} size=0x3 flags=0x0 ssid=0x0
reassign guest=0x0 page={_PAGE:#x} dst=0x1 dst_page=0x0
dma device=0x0 iova={DMA_IOVA:#x} size=0x3 flags=0x1 ssid=0x0
"""


def _inputs(n: int, seed: int = 0) -> list[bytes]:
    """Mutator outputs chained from the empty program, and some raw garbage."""
    rng, m, out, data = random.Random(seed), Mutator(), [], b""
    for i in range(n):
        data = m.mutate(data if rng.random() < 0.9 else b"", 2048, i)
        out.append(data if rng.random() < 0.8 else rng.randbytes(rng.randrange(300)))
    return out


# ------------------------------------------------------------------ mutator
def test_outputs_are_canonical_programs_within_max_size():
    m, rng = Mutator(), random.Random(1)
    inputs = _inputs(150)
    for seed, data in enumerate(inputs):
        max_size = rng.choice((0, 5, 70, 300, 4096))
        for out in (m.mutate(data, max_size, seed),
                    m.crossover(data, inputs[seed - 1], max_size, seed)):
            assert len(out) <= max_size
            ops = decode(out)
            assert len(ops) <= MAX_OPS and encode(ops) == out


def test_mutator_is_deterministic_per_seed():
    m = Mutator()
    inputs = _inputs(40, seed=2)
    first = [m.mutate(d, 1024, 7 + i) for i, d in enumerate(inputs)]
    assert first == [m.mutate(d, 1024, 7 + i) for i, d in enumerate(inputs)]
    assert first != [m.mutate(d, 1024, 8 + i) for i, d in enumerate(inputs)]
    pair = (inputs[3], inputs[9], 1024)
    assert m.crossover(*pair, 5) == m.crossover(*pair, 5)


def test_inserted_operations_are_meaningful():
    gen = Generator(random.Random(3), Hints(), SYSTEM_BIAS)
    ops = [gen.op() for _ in range(400)]
    names = {op.spec.name for op in ops}
    assert {"dma", "vste", "cd", "cmd", "mmio_write", "reassign"} <= names
    dmas = [op for op in ops if op.spec.name == "dma"]
    assert sum(DMA_IOVA <= op.iova < DMA_IOVA + 0x4000 for op in dmas) > len(dmas) / 4
    opcodes = {op.cmd[0] for op in ops if op.spec.name == "cmd"}
    assert len(opcodes & {o.value for o in Opcode}) > len(Opcode) // 2


def test_guest_pointers_are_sometimes_host_addresses():
    host_pa = 0x1_0010_2000  # not an IPA hint: only `pas` holds it
    gen = Generator(random.Random(7), Hints(pas=(host_pa,)), SYSTEM_BIAS)
    pointers = [STE.decode(gen.ste())["S1CONTEXTPTR"] for _ in range(300)]
    assert 0 < pointers.count(host_pa) < len(pointers) / 4


def test_virtio_maps_and_unmaps_aim_at_the_edges_of_mappings():
    # the boot's mapping [DMA_IOVA, +4 pages) in domain 2, and a MAP of 2 pages after it
    boot_map = (0, 2, DMA_IOVA, DMA_IOVA + 0x3FFF)
    gen = Generator(random.Random(6), Hints(mappings=(boot_map,)), VIRTIO_BIAS)
    before = parse(f"viommu_map guest=0x0 domain=0x2 iova={DMA_IOVA + 0x4000:#x} pages=0x1 "
                   "page=0x0 flags=0x3")
    unmaps = {(op.iova - DMA_IOVA, op.pages) for op in
              (gen.op("viommu_unmap", before) for _ in range(400)) if op.domain == 2}
    assert {(0, 3),  # the boot's mapping exactly
            (0, 5),  # both whole
            (0, 4),  # the boot's whole, the MAP's split: RANGE, nothing removed
            (0x1000, 5),  # the boot's split, the MAP's whole
            (-0x1000, 7),  # a page either side of both
            } <= unmaps
    maps = {(op.iova - DMA_IOVA, op.pages) for op in
            (gen.op("viommu_map", before) for _ in range(400)) if op.domain == 2}
    assert {(0x4000, 0), (0x6000, 0), (-0x1000, 0), (-0x4000, 3)} <= maps
    # an UNMAP of both, mutated, is sometimes re-aimed: here, to split the MAP's
    both = parse(f"viommu_unmap guest=0x0 domain=0x2 iova={DMA_IOVA:#x} pages=0x5")[0]
    mutated = {(op.iova - DMA_IOVA, op.pages) for op in
               (Mutator().mutate_operand(both, gen, before) for _ in range(400))}
    assert (0, 4) in mutated


def test_teardowns_aim_at_the_device_a_dma_used():
    # device 5 is g0's (slot 0) on the fuzzing platform; device 1 is g1's
    hints = Hints(guests=(0, 1), devices=6, buffers=((5, 0, 0x10), (1, 1, 0x10)))
    gen = Generator(random.Random(3), hints, SYSTEM_BIAS)
    before = parse(f"dma device=0x5 iova={DMA_IOVA:#x} size=0x3 flags=0x1 ssid=0x0")
    destroyed = [gen.op("destroy", before).guest for _ in range(200)]
    deassigned = [gen.op("deassign", before).device for _ in range(200)]
    # half re-aimed at the DMA's guest and device; the rest as they came
    assert destroyed.count(0) > 120 and 1 in destroyed
    assert deassigned.count(5) > 80 and len(set(deassigned)) > 2


@pytest.mark.parametrize("layout", [STE, CD, COMMANDS[Opcode.TLBI_NH_VA],
                                    COMMANDS[Opcode.CFGI_STE], COMMANDS[Opcode.SYNC]],
                         ids=lambda layout: layout.name)
def test_field_mutation_changes_exactly_one_field(layout):
    gen = Generator(random.Random(4), Hints(), SYSTEM_BIAS)
    reserved_hits = 0
    for seed in range(300):
        rng = random.Random(seed)
        if layout is STE or layout is CD:
            word = gen.ste() if layout is STE else gen.cd()
        else:  # a command of the layout's opcode with random fields
            word = rng.getrandbits(layout.width) & layout.defined_mask
            word = layout["OP"].put(word, Opcode[layout.name.removeprefix("CMD_")])
        new, name = mutate_field(layout, word, rng)
        assert new != word
        before, after = layout.decode(word), layout.decode(new)
        changed = {f for f in before if before[f] != after[f]}
        if name is None:  # one reserved bit toggled
            reserved_hits += 1
            assert not changed and bin(new ^ word).count("1") == 1
            assert (new ^ word) & layout.reserved_mask
        else:
            assert changed == {name}
            assert not (new ^ word) & layout.reserved_mask
    assert reserved_hits > 0 or not layout.reserved_mask


def test_operand_mutation_of_a_vste_changes_one_field_mostly():
    m, gen = Mutator(), Generator(random.Random(5), Hints(), SYSTEM_BIAS)
    op = Op(OP_BY_NAME["vste"], (0, 0, 0, STE.to_bytes(gen.ste())))
    one_field = 0
    for _ in range(200):
        new = m.mutate_operand(op, gen)
        if new.args[:3] == op.args[:3] and new.ste != op.ste:
            before = STE.decode(int.from_bytes(op.ste, "little"))
            after = STE.decode(int.from_bytes(new.ste, "little"))
            one_field += sum(before[f] != after[f] for f in before) <= 1
    assert one_field > 20


def _within(part: list, whole: list) -> bool:
    return any(whole[i : i + len(part)] == part for i in range(len(whole) - len(part) + 1))


def test_crossover_splices_both_parents_around_a_step():
    """A non-empty prefix of the first parent, the separator, a non-empty run of
    the second (its suffix, unless that had to be shortened to fit)."""
    m, inputs = Mutator(), [d for d in _inputs(80, seed=6) if decode(d)]
    for seed, (a, b) in enumerate(zip(inputs, inputs[1:], strict=False)):
        first, second = decode(a), decode(b)
        out = decode(m.crossover(a, b, 1 << 16, seed))
        assert any(op == SEPARATOR and 1 <= i < len(out) - 1 and out[:i] == first[:i]
                   and _within(out[i + 1:], second) for i, op in enumerate(out)), seed
    short = [decode(d)[:1] for d in inputs[:2]]
    out = decode(m.crossover(encode(short[0]), encode(short[1]), 1 << 16, 0))
    assert out == [short[0][0], SEPARATOR, short[1][0]]


def test_dictionary_is_current():
    assert dictionary.PATH.read_text() == dictionary.render()
    tokens = dict(dictionary.entries())
    assert tokens["dma_iova"] == DMA_IOVA.to_bytes(8, "little")
    assert tokens["cmd_CFGI_STE"] == bytes([Opcode.CFGI_STE])


# ------------------------------------------------------------------ physical SMMU
DMA_FAULTS = """\
dma device=0 iova=0x20000000 size=3 flags=0 ssid=0
dma device=1 iova=0x7000000 size=3 flags=0 ssid=0
dma device=2 iova=0x20000000 size=3 flags=1 ssid=0
dma device=5 iova=0 size=3 flags=0 ssid=0
"""


def test_physical_runner_clean_and_reached():
    result = PhysicalRunner().run(parse(DMA_FAULTS))
    assert result.ok, result.violation
    assert {"smmu.event:F_TRANSLATION", "smmu.event:C_BAD_STE",
            "smmu.fault:F_TRANSLATION S2 CLASS=IN"} <= result.coverage


def test_translated_config_error_is_not_required_to_be_recorded():
    # IHI 0070 §3.9.1.3: an ATS-translated transaction (flags 0x10) to an STE that is
    # not valid aborts with C_BAD_STE, recorded only with IDR0.ATSRECERR=1 (not ours).
    # A campaign found the oracle requiring the record: it must not invent that.
    result = PhysicalRunner().run(parse("dma device=5 iova=0 size=3 flags=0x10 ssid=0\n"))
    assert result.ok, result.violation


def test_physical_runner_catches_a_recorded_translated_config_error(monkeypatch):
    def always(self, fault, stream, ctx, record=True):
        return DmaResult(False, fault=fault, recorded=self.record(fault))

    monkeypatch.setattr(Smmu, "_fail", always)
    v = PhysicalRunner().run(parse("dma device=5 iova=0 size=3 flags=0x10 ssid=0\n")).violation
    assert v is not None and v.invariant == FAULT_REPORTING
    assert (v.witness["event"], v.witness["problem"]) == ("C_BAD_STE", "recorded")


def test_physical_runner_catches_a_swallowed_fault(monkeypatch):
    monkeypatch.setattr(Smmu, "_record_allowed", lambda self, fault, stream, ctx: False)
    v = PhysicalRunner().run(parse(DMA_FAULTS)).violation
    assert v is not None and v.invariant == FAULT_REPORTING and v.step == 0
    assert (v.witness["event"], v.witness["control"]) == ("F_TRANSLATION", "CD.R=1")


# ------------------------------------------------------------------ harness scripts
def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def test_harness_scripts_run_under_libfuzzer(tmp_path):
    procs = {}
    for script in sorted(HARNESSES.glob("*_fuzzer.py")):
        assert os.access(script, os.X_OK) and script.read_text().startswith(
            "#!/usr/bin/env python3\n")
        work = tmp_path / script.stem
        (work / "corpus").mkdir(parents=True)
        procs[script.stem] = subprocess.Popen(
            [sys.executable, str(script), "-runs=50", "-seed=1", "-max_len=256",
             f"-artifact_prefix={work}/", str(work / "corpus")],
            env=_env(VSMMU_FUZZ_Z3="0"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
    assert set(procs) == ({f"{t}_fuzzer" for t in TARGETS}
                          | {f"parse_{p}_fuzzer" for p in parsers.TARGETS})
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, (name, out[-2000:])
        assert "Done 50 runs" in out, (name, out[-2000:])


def test_model_harnesses_leave_out_only_plumbing_that_exists():
    """A renamed module would silently be instrumented again: each named one exists,
    and every model harness (not the parser ones: parsing is what they test) uses it."""
    from fuzz.instrumentation import INCLUDE, PLUMBING

    for name in PLUMBING:
        assert name.split(".")[0] in INCLUDE and importlib.util.find_spec(name), name
    for target in TARGETS:
        text = (HARNESSES / f"{target}_fuzzer.py").read_text()
        assert "instrument_imports(include=INCLUDE, exclude=PLUMBING)" in text, target


# ------------------------------------------------------------------ campaigns
def _seeds(tmp_path: Path, text: str) -> Path:
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "seed-stale-tlb").write_bytes(encode(parse(text)))
    return seeds


def _options(tmp_path: Path, seeds: Path, **kw) -> CampaignOptions:
    for d in ("corpus", "artifacts"):
        (tmp_path / d).mkdir(exist_ok=True)
    return CampaignOptions(runs=20, seed=1, z3=False, corpus=str(tmp_path / "corpus"),
                           artifacts=str(tmp_path / "artifacts"), seeds=str(seeds), **kw)


def test_clean_campaign_and_json_shape(tmp_path):
    progress = io.StringIO()
    result = run_campaign(_options(tmp_path, _seeds(tmp_path, STALE_TLB), progress=progress))
    assert re.match(r"\[0:\d\d\] system: [\d,]+ execs \([\d,]+/s\), cov \d+, corpus \d+, "
                    r"findings 0\n", progress.getvalue())
    assert result.findings == [] and result.errors == [] and result.exit_code == 0
    out = result.as_dict()
    assert json.loads(json.dumps(out)) == out
    assert {"execs", "execs_per_sec", "seconds", "findings", "coverage"} <= set(out)
    assert out["execs"] >= 20 and out["findings"] == []
    assert "TLBI_S2_IPA" in out["coverage"]["commands (physical)"]
    assert "CFGI_STE" in out["coverage"]["commands (guest)"]


def test_campaign_finds_a_planted_bug_and_resumes(tmp_path):
    options = _options(tmp_path, _seeds(tmp_path, STALE_TLB), plant="forgotten-tlbi")
    result = run_campaign(options)
    assert result.errors == [] and result.exit_code == 1
    [finding] = result.findings
    assert (finding.invariant, finding.signature, finding.new) == (
        "tlb-containment", "tlb-containment:iotlb", True)
    artifact = Path(finding.artifact)
    assert artifact.name.startswith("crash-") and artifact.read_bytes() == encode(
        parse(STALE_TLB))
    sidecar = json.loads(artifact.with_name(artifact.name + ".json").read_text())
    assert sidecar["invariant"] == "tlb-containment" and sidecar["step"] == 1
    assert sidecar["witness"]["page_owner"] == "g1" and sidecar["target"] == "system"
    # The worker stopped on the finding, was restarted and no longer stops on it.
    assert result.restarts == 1 and result.execs >= 20
    # Resume: the finding is reported again from its sidecar, nothing is lost.
    again = run_campaign(options)
    assert [(f.signature, f.new, f.artifact) for f in again.findings] == [
        ("tlb-containment:iotlb", False, finding.artifact)]
    assert again.corpus >= result.corpus


def test_bad_input_is_one_line_and_status_2(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    fuzz_command.add_arguments(parser)
    bad = tmp_path / "bad.toml"
    bad.write_text("[[smmu]]\nname = 3\n")
    for argv in (["--platform", str(bad)], ["--corpus", str(tmp_path / "missing")],
                 ["--", "not-a-flag"]):
        assert fuzz_command.main(parser.parse_args(argv)) == 2
        err = capsys.readouterr().err
        assert err.startswith("vsmmu fuzz: ") and err.count("\n") == 1
    args = parser.parse_args(["--jobs", "0", "--target", "smmu", "--", "-max_len=64"])
    assert (args.jobs, args.target, args.libfuzzer_args) == (0, "smmu", ["-max_len=64"])


def test_merge_corpora(tmp_path):
    sources = []
    for i, text in enumerate((STALE_TLB, DMA_FAULTS)):
        src = tmp_path / f"src{i}"
        src.mkdir()
        (src / "a").write_bytes(encode(parse(text)))
        (src / "b").write_bytes(encode(parse(text)[:1]))
        sources.append(src)
    result = merge_corpora(tmp_path / "dest", sources)
    assert result.before == 0 and 1 <= result.after <= 4
    assert all(len(list(s.iterdir())) == 2 for s in sources)
    with pytest.raises(CampaignError, match="does not exist"):
        merge_corpora(tmp_path / "dest", [tmp_path / "nowhere"])
