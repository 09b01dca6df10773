"""The seed corpora: generated from the guest driver, small, checked in as generated,
and every seed replays clean on the correct model."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz.corpus import (
    MAX_SEED_BYTES,
    TARGET_SEEDS,
    TARGETS,
    _viommu_unmap_several,
    seeds,
    write_seeds,
    write_texts,
)
from fuzz.program import decode, encode, load
from fuzz.runner import Runner, fuzz_platform

CORPORA = Path(__file__).resolve().parents[1] / "corpora"


@pytest.fixture(scope="module")
def runner():
    return Runner()


@pytest.fixture(scope="module")
def virtio_runner():
    return Runner(fuzz_platform("virtio"))


@pytest.mark.parametrize("name", sorted(seeds()))
def test_every_seed_replays_clean(runner, virtio_runner, name):
    _, ops = seeds()[name]
    runner = virtio_runner if name in TARGET_SEEDS["virtio-iommu"] else runner
    result = runner.run(list(ops))
    assert result.violation is None, f"{name}: {result.violation}\n{result.traceback or ''}"
    assert result.ops == len(ops)


def test_seeds_are_small_and_canonical():
    for name, (_, ops) in seeds().items():
        data = encode(list(ops))
        assert len(data) < MAX_SEED_BYTES, name
        assert decode(data) == list(ops), name


def test_seeds_exercise_what_they_are_for(runner):
    def reached(name):
        return runner.run(list(seeds()[name][1])).coverage

    assert "vsmmu.cmd:TLBI_NH_VA" in reached("map-unmap")
    assert "vsmmu.cmd:TLBI_NH_ASID" in reached("reattach")
    assert {"smmu.event:C_BAD_STE", "smmu.event:C_BAD_SUBSTREAMID",
            "smmu.event:F_TRANSLATION"} <= reached("event-service")
    assert "vsmmu.event:F_TRANSLATION" in reached("hyp-unmap-reassign")


def test_virtio_seeds_fault_where_they_say(virtio_runner):
    for name in ("viommu-map-unmap", "viommu-unmap-several", "viommu-hyp"):
        result = virtio_runner.run(list(seeds()[name][1]))  # DMA after UNMAP / the page left
        assert "smmu.event:F_TRANSLATION" in result.coverage, name


def test_one_unmap_over_two_mappings_removes_both():
    b = _viommu_unmap_several()
    assert b.system.hyp.guests["g0"].viommu.mappings(b.system.domains["nic0"].id) == []


def test_checked_in_corpora_are_what_the_generator_writes(tmp_path):
    for target in TARGETS:
        written = write_seeds(tmp_path, target)
        assert [p.name for p in written] == [f"seed-{n}" for n in TARGET_SEEDS[target]]
        for path in written:
            checked_in = CORPORA / target / path.name
            assert checked_in.read_bytes() == path.read_bytes(), (
                f"{checked_in} is stale: run `python -m fuzz.corpus`")
    for path in write_texts(tmp_path):
        assert (CORPORA / "programs" / path.name).read_text() == path.read_text()
        # the text form is the same program as the bytes (of whichever target has it)
        [target] = [t for t in TARGETS if path.stem.removeprefix("seed-") in TARGET_SEEDS[t]][:1]
        assert encode(load(str(path))) == (CORPORA / target / path.stem).read_bytes()


def test_unknown_target_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown target"):
        write_seeds(tmp_path, "nope")
