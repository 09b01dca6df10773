"""The universal proofs hold on the real transfer functions and fail, with a
concrete counterexample, on deliberately broken variants (non-vacuity)."""

from __future__ import annotations

import json

import pytest

from fuzz.cli import main
from properties.predicates import command_confined, event_confined, stage2_authority
from properties.proofs import prove_all, prove_commands, prove_events, prove_vste
from vsmmu.arch import bv
from vsmmu.arch.layouts import COMMANDS, EVENT, STE, Config, Op
from vsmmu.hyp.hypervisor import Hypervisor
from vsmmu.hyp.transfer import HostStream, guest_command, guest_event, vste_to_pste


@pytest.fixture(scope="module")
def hyp():
    return Hypervisor()


@pytest.fixture(scope="module")
def g0(hyp):
    guest = hyp.guests["g0"]
    vsmmu = guest.vsmmus["smmu0"]
    host = HostStream(guest.s2_ste, vsmmu.feat.ssidsize, False, vsmmu.feat.oas_bits)
    return host, vsmmu.context()


def test_every_proof_holds_on_the_real_code(hyp):
    results = prove_all(hyp)
    assert {r.result for r in results} == {"proved"}
    # one event proof, then s2-authority and cmd-confinement per (guest, vSMMU)
    assert len(results) == 1 + 2 * 2 * 2


# Each broken variant is a bug class of shared/reference/smmu-anchors.md §6.
def _leak_s2ttb(vste, host):  # guest STE bits leak into the physical STE (class 2)
    return vste_to_pste(vste, host) | (vste & STE["S2TTB"].mask)


def _bypass_passthrough(vste, host):  # a bypass vSTE becomes a physical bypass STE
    bypass = STE.encode(V=1, CONFIG=Config.BYPASS)
    return bv.ite(STE.get(vste, "CONFIG") == Config.BYPASS, bypass, vste_to_pste(vste, host), 512)


def _full_ats(vste, host):  # a guest's EATS=1 reaches hardware as full ATS (no stage 2)
    out = vste_to_pste(vste, host)
    return bv.ite(STE.get(out, "EATS") == 2, STE.put(out, "EATS", 1), out, 512)


def _vmid_passthrough(cmd, ctx):  # guest VMID reaches hardware (class 3)
    action, out = guest_command(cmd, ctx)
    return action, out | (cmd & COMMANDS[Op.TLBI_NH_ASID]["VMID"].mask)


def _vsid_untranslated(cmd, ctx):  # vSID used as the pSID (class 1)
    action, out = guest_command(cmd, ctx)
    layout = COMMANDS[Op.CFGI_CD_ALL]
    return action, layout.put(out, "SID", layout.get(cmd, "SID"))


def _psid_in_event(record, vsid, fetch_ipa):  # records leak the pSID (class 12)
    forward, out = guest_event(record, vsid, fetch_ipa)
    return forward, EVENT.put(out, "SID", EVENT.get(record, "SID"))


def _pa_in_event(record, vsid, fetch_ipa):  # records leak a physical address (class 12)
    forward, out = guest_event(record, vsid, fetch_ipa)
    return forward, out | (record & EVENT["FETCH_ADDR"].mask)


@pytest.mark.parametrize("broken", [_leak_s2ttb, _bypass_passthrough, _full_ats])
def test_s2_authority_proof_catches_broken_sanitizers(g0, broken):
    host, _ = g0
    host = HostStream(host.s2_ste, host.ssidsize, ats=True, oas_bits=host.oas_bits)
    r = prove_vste(host, "broken", transfer=broken)
    assert r.result == "violated"
    vste = int(r.counterexample["vste"], 16)
    assert not stage2_authority(broken(vste, host), host.s2_ste)  # replays concretely
    assert stage2_authority(vste_to_pste(vste, host), host.s2_ste)  # the real code is fine


@pytest.mark.parametrize("broken", [_vmid_passthrough, _vsid_untranslated])
def test_cmd_confinement_proof_catches_broken_filters(g0, broken):
    _, ctx = g0
    r = prove_commands(ctx, "broken", transfer=broken)
    assert r.result == "violated"
    cmd = int(r.counterexample["cmd"], 16)
    action, out = broken(cmd, ctx)
    assert action == 1 and not command_confined(out, ctx)


@pytest.mark.parametrize("broken", [_psid_in_event, _pa_in_event])
def test_event_confinement_proof_catches_broken_forwarding(broken):
    r = prove_events(subject="broken", transfer=broken)
    assert r.result == "violated"
    rec, vsid, fetch = (int(r.counterexample[k], 16) for k in ("record", "vsid", "fetch_ipa"))
    forward, out = broken(rec, vsid, fetch)
    assert forward and not event_confined(out, rec, vsid, fetch)


def test_prove_cli_json_shape(capsys):
    assert main(["prove", "--json"]) == 0
    proofs = json.loads(capsys.readouterr().out)["proofs"]
    assert {"property", "result", "seconds", "counterexample"} <= set(proofs[0])
    assert all(p["result"] == "proved" and p["counterexample"] is None for p in proofs)
