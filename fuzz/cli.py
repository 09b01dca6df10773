"""The `vsmmu` command line.  Each subcommand is a thin shell over a library call.

This is the application shell over all three layers (the model, properties/,
fuzz/); it imports the upper layers lazily, inside the subcommands, and
nothing in the model imports it.  Exit status: fuzz/exits.py, the same for
every command."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import replace

from . import exits, version
from .outputs import unwritable_file, write_report


def _demo(args: argparse.Namespace) -> int:
    from vsmmu.sw import demo

    result = demo.run()
    print(json.dumps(result, indent=2) if args.json else demo.format_text(result))
    return 0


class UsageError(Exception):
    """Bad input to a command: one line, exit status 2."""


def _load_platform(args: argparse.Namespace):
    """The --platform file, or None for the embedded one."""
    from vsmmu.platform import PlatformError, load_platform

    if not args.platform:
        return None
    try:
        return load_platform(args.platform)
    except PlatformError as e:
        raise UsageError(str(e)) from None


def _info(args: argparse.Namespace) -> int:
    from vsmmu.arch.features import Features
    from vsmmu.arch.layouts import REG

    platform = _load_platform(args)
    smmus = {s.name: s.features for s in platform.smmus} if platform else {"": Features()}
    shown = {name: feat.id_registers() for name, feat in smmus.items()}
    if args.json:  # without --platform: the default SMMU's registers, as it always was
        as_hex = {n: {r: f"{v:#010x}" for r, v in regs.items()} for n, regs in shown.items()}
        print(json.dumps(as_hex if platform else as_hex[""], indent=2))
        return 0
    for smmu, regs in shown.items():
        if smmu:
            print(f"{smmu}:")
        for name, value in regs.items():
            print(f"{name:5} {value:#010x}  {REG[name].layout.format(value)}")
    return 0


def _designs(args: argparse.Namespace) -> int:
    from vsmmu.hyp.designs import DEFAULT, PROFILES

    if args.json:
        print(json.dumps({"designs": [p.as_dict() for p in PROFILES.values()]}, indent=2))
        return 0
    for p in PROFILES.values():
        print(f"{p.name}{' (default)' if p.name == DEFAULT else ''}: {p.summary}")
        for c in p.choices:
            print(f"  {c.topic}: {c.choice}\n      source: {c.source}")
        print()
    return 0


def _prove(args: argparse.Namespace) -> int:
    from fuzz import junit, sarif
    from properties.proofs import prove_all
    from vsmmu.hyp.hypervisor import Hypervisor
    from vsmmu.platform import DEFAULT_DESIGN, PlatformError, default_platform

    _check_reports(args)
    platform = _load_platform(args)
    if args.design:
        platform = replace(platform or default_platform(), design=args.design)
    try:
        hyp = Hypervisor(platform) if platform else None
    except PlatformError as e:  # one the hypervisor cannot boot
        raise UsageError(str(e)) from None
    results = prove_all(hyp, timeout_ms=args.timeout * 1000)
    if args.sarif:
        rules = sarif.invariant_rules()
        failed = [sarif.result(
            r.property, rules,
            f"{r.property} {r.result} for {r.subject}" + "".join(
                f", {k}={v}" for k, v in (r.counterexample or {}).items()),
            [{"logicalLocations": [{"name": r.subject, "kind": "module"}]}],
            f"proof:{r.property}:{r.subject}:{r.result}",
            level="error" if r.result == "violated" else "warning",
            design=hyp.design.name if hyp else DEFAULT_DESIGN)
            for r in results if r.result != "proved"]
        _write_report(args.sarif, sarif.log(rules, failed, version=version()))
    if args.junit:
        cases = [junit.Case(f"vsmmu.prove.{r.property}", r.subject, r.seconds, None
                            if r.result == "proved" else (r.result, f"{r.property} {r.result} "
                            f"for {r.subject}", json.dumps(r.counterexample or {})))
                 for r in results]
        _write_report(args.junit, junit.suite("vsmmu prove", cases))
    if args.json:
        print(json.dumps({"proofs": [r.as_dict() for r in results]}, indent=2))
    else:
        print(f"{'property':20} {'for':12} {'result':9} {'seconds':>8}  counterexample")
        for r in results:
            cex = " ".join(f"{k}={v}" for k, v in (r.counterexample or {}).items())
            print(f"{r.property:20} {r.subject:12} {r.result:9} {r.seconds:8.3f}  {cex}")
    return 0 if all(r.result == "proved" for r in results) else 1


def _check(args: argparse.Namespace) -> int:
    from fuzz import junit, sarif
    from fuzz.program import ProgramError, load, to_text
    from fuzz.progress import Ticker, announce
    from fuzz.targets import runner_for
    from fuzz.triage import signature
    from vsmmu.platform import PlatformError

    _check_reports(args)
    try:
        ops = load(args.program, raw=True if args.bytes else None)
        with announce(f"booting the {args.target} target", prefix="vsmmu check"):
            runner = runner_for(args.target, args.platform, z3=not args.no_z3,
                                design=args.design)
    except (ProgramError, PlatformError) as e:
        print(f"vsmmu check: {e}", file=sys.stderr)
        return 2
    ticker = Ticker(prefix="vsmmu check")
    result = runner.run(ops, lambda done, total: ticker.tick(f"step {done}/{total}"))
    seconds = time.monotonic() - ticker.start
    v = result.violation
    if args.json:
        print(json.dumps({
            "file": args.program, "ops": len(ops), "executed": result.ops,
            "result": "clean" if v is None else "violation",
            "violation": v.as_dict() if v else None, "traceback": result.traceback,
            "coverage": sorted(result.coverage),
        }, indent=2))
    else:
        lines = to_text(ops).splitlines()
        for i, line in enumerate(lines[: result.ops]):
            marker = ">>" if v is not None and i == v.step else "  "
            print(f"{marker} {i:3} {line}")
        if v is None:
            print(f"clean: {len(ops)} operations, every invariant held after each")
        else:
            print(f"VIOLATION {v}")
            if result.traceback:
                print(result.traceback, end="")
    if args.sarif:
        rules = sarif.invariant_rules()
        found = [] if v is None else [sarif.finding(
            rules, v.invariant, signature(v, result.traceback), v.step,
            v.as_dict()["witness"], [args.program], runner.design)]
        _write_report(args.sarif, sarif.log(rules, found, version=version()))
    if args.junit:
        failure = None if v is None else (v.invariant, str(v), result.traceback or "")
        case = junit.Case(f"vsmmu.check.{args.target}", args.program, seconds, failure)
        _write_report(args.junit, junit.suite("vsmmu check", [case]))
    return 0 if v is None else 1


def _check_reports(args: argparse.Namespace) -> None:
    """The report files a command writes must be writable, before any work."""
    for flag in ("sarif", "junit"):
        path = getattr(args, flag, None)
        if path and (why := unwritable_file(path, f"--{flag}")):
            raise UsageError(why)


def _write_report(path: str, content: dict | str) -> None:
    if why := write_report(path, content):
        raise UsageError(why)


def _corpus_merge(args: argparse.Namespace) -> int:
    from fuzz.campaign import CampaignError, merge_corpora

    try:
        result = merge_corpora(args.dest, args.sources, target=args.target)
    except CampaignError as e:
        print(f"vsmmu corpus merge: {e}", file=sys.stderr)
        return 2
    print(f"{args.dest}: {result.before} -> {result.after} inputs ({result.added} added)")
    return 0


def _delegate(module: str) -> Callable[[argparse.Namespace], int]:
    """A subcommand whose options and behaviour live in fuzz.<module>."""

    def run(args: argparse.Namespace) -> int:
        return importlib.import_module(f"fuzz.{module}").main(args)

    return run




# Subcommands whose options and behaviour live in fuzz/: (name, module, help).
DELEGATED = (
    ("fuzz", "fuzz_command", "run a fuzzing campaign (default: every harness in turn on "
     "the embedded platform, all invariants, 60 s)"),
    ("triage", "triage", "replay, classify, group and minimize crash inputs"),
    ("compare", "compare", "every vSMMU design under every invariant, side by side: "
     "proofs and campaigns, each violation with a minimized witness"),
    ("diff-qemu", "peers.differential", "differential test of the SMMUv3 model against QEMU's"),
    ("bench", "bench.bugs", "benchmarks: planted bugs found (ours vs baselines), speed"),
)


def build_parser() -> argparse.ArgumentParser:
    from fuzz import options

    parser = argparse.ArgumentParser(
        prog="vsmmu",
        description="Security fuzzer and Z3 property checker for Arm SMMUv3 virtualization.",
        epilog="exit status: 0 clean, 1 findings, 2 usage or input error, 3 internal "
        "error, 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"vsmmu {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("demo", help="drive the SMMUv3 model: translations, faults, events")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_demo)
    p = sub.add_parser("prove", help="prove the vSMMU transfer functions for all guest inputs")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--time", "--timeout", dest="timeout", type=options.count, default=30,
                   metavar="S", help="Z3 time limit per proof, seconds (default 30); a "
                   "timeout is 'unknown'")
    options.add_platform(p, " (proved per guest and vSMMU of that platform)")
    options.add_design(p)
    options.add_sarif(p)
    options.add_junit(p, "a test case per proof and subject")
    p.set_defaults(func=_prove)
    p = sub.add_parser("check", help="replay a fuzz program with every invariant on")
    p.add_argument("program", help="a program file: text (UTF-8), or the bytes "
                   "of a fuzz input")
    p.add_argument("--bytes", action="store_true",
                   help="decode the file as fuzz-input bytes even if it reads as text "
                   "(a file with a NUL or other control byte is taken as bytes anyway)")
    options.add_platform(p)
    options.add_design(p)
    options.add_target(p, "the program came from")
    p.add_argument("--no-z3", action="store_true", help="skip the Z3 state checks")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    options.add_sarif(p)
    options.add_junit(p, "a test case for the program")
    p.set_defaults(func=_check)
    for name, module, text in DELEGATED:
        p = sub.add_parser(name, help=text)
        importlib.import_module(f"fuzz.{module}").add_arguments(p)
        p.set_defaults(func=_delegate(module))
    p = sub.add_parser("corpus", help="corpus maintenance")
    corpus = p.add_subparsers(dest="corpus_command", required=True, metavar="ACTION")
    p = corpus.add_parser("merge", help="distil corpora gathered on many machines into DEST")
    p.add_argument("dest", help="the merged corpus (created if missing)")
    p.add_argument("sources", nargs="+", help="corpus directories to take new coverage from")
    p.add_argument("--target", default="system", help="the harness whose coverage counts")
    p.set_defaults(func=_corpus_merge)
    p = sub.add_parser("designs", help="the vSMMU designs under test, each choice with "
                       "its source")
    p.add_argument("--json", action="store_true", help="print one JSON object: "
                   '{"designs": [{"name", "summary", "choices": [{"topic", "choice", '
                   '"source"}]}]}')
    p.set_defaults(func=_designs)
    p = sub.add_parser("info", help="the model's ID registers, decoded (default SMMU, or "
                       "each SMMU of --platform)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    options.add_platform(p)
    p.set_defaults(func=_info)
    return parser



def _internal_error(e: Exception) -> int:
    """A bug of ours: one line for the user, the traceback in a file to report."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        with tempfile.NamedTemporaryFile("w", prefix=f"vsmmu-internal-error-{stamp}-",
                                         suffix=".log", delete=False) as log:
            log.write(f"vsmmu {version()}, argv {sys.argv!r}\n")
            log.write(traceback.format_exc())
        where = f"the traceback is in {log.name}"
    except OSError as oe:
        where = f"and its traceback could not be written ({oe.strerror})"
    print(f"vsmmu: internal error: {type(e).__name__}: {str(e)[:200]}; {where}",
          file=sys.stderr)
    return exits.INTERNAL_ERROR


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"vsmmu {args.command}: {e}", file=sys.stderr)
        return exits.USAGE
    except KeyboardInterrupt:
        print("vsmmu: interrupted", file=sys.stderr)
        return exits.INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the one place that catches everything
        return _internal_error(e)


if __name__ == "__main__":
    sys.exit(main())
