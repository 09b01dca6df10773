"""`vsmmu fuzz`: its options, one campaign (fuzz/campaign.py) or all targets in
turn (fuzz/all_targets.py, the default), and the summary (text, `--json`, SARIF).

Exit status (fuzz/exits.py): 0 nothing found, 1 findings, 2 a usage or input
error or an output that cannot be written (one line on stderr), 130 stopped by
a signal (SIGINT, SIGTERM, SIGHUP: the summary still comes).
"""

from __future__ import annotations

import argparse
import json
import sys

from . import options, report, sarif
from . import version as fuzz_version
from .all_targets import run_all
from .campaign import DEFAULT_TIME, CampaignError, CampaignOptions, run_campaign
from .outputs import unwritable_dir, unwritable_file, write_report
from .results import CampaignResult, format_result
from .targets import ALL, TARGETS


def run(o: CampaignOptions) -> CampaignResult:
    """The campaign `o` asks for; raises CampaignError on bad input."""
    return run_all(o) if o.target == ALL else run_campaign(o)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `vsmmu fuzz`."""
    parser.add_argument("--time", type=options.seconds, metavar="S",
                        help=f"fuzz for S seconds (default {DEFAULT_TIME:g} unless --runs "
                        "is given)")
    parser.add_argument("--runs", type=options.count, metavar="N",
                        help="stop after about N executions in total")
    parser.add_argument("--jobs", type=options.count_or_zero, default=1, metavar="N",
                        help="parallel libFuzzer processes (default 1; 0: one per core)")
    parser.add_argument("--target", choices=(ALL, *TARGETS), default=ALL,
                        help="harness: all of them in turn, sharing the time (default), the "
                        "whole system, vSTE/CD writes, guest commands, the physical SMMU "
                        "alone, or virtio-iommu guests")
    parser.add_argument("--corpus", metavar="DIR",
                        help="working corpus, read and extended (default "
                        "fuzz-out/corpus/<target>; must exist when given; with --target all, "
                        "one subdirectory per target); the seeds in corpora/<target>/ are "
                        "read too, never written")
    parser.add_argument("--artifacts", metavar="DIR",
                        help="where crash files and their .json sidecars go "
                        "(default fuzz-out/artifacts/)")
    options.add_platform(parser, " (smmu target: its SMMU takes the features of the "
                         "platform's first SMMU)")
    options.add_design(parser)
    parser.add_argument("--seed", type=options.count_or_zero, metavar="N",
                        help="libFuzzer random seed, for a campaign that can be repeated "
                        "(job j uses N+j+1); 0, as no --seed: libFuzzer picks one at random")
    parser.add_argument("--no-z3", action="store_true", help="skip the Z3 state checks")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (the progress line goes to stderr)")
    options.add_sarif(parser)
    parser.add_argument("--report", metavar="DIR", help="also write a campaign report: "
                        "DIR/report.html (self-contained) and DIR/report.json")
    parser.add_argument("libfuzzer_args", nargs="*", metavar="-- FLAG",
                        help="after --: raw libFuzzer flags, passed through "
                        "(e.g. -- -max_len=2048 -use_value_profile=1)")


def options_from_args(args: argparse.Namespace) -> CampaignOptions:
    return CampaignOptions(
        target=args.target, time=args.time, runs=args.runs, jobs=args.jobs,
        corpus=args.corpus, artifacts=args.artifacts, platform=args.platform,
        design=args.design, seed=args.seed,
        z3=not args.no_z3, libfuzzer_args=tuple(args.libfuzzer_args),
        progress=sys.stderr if args.json else sys.stdout)


def main(args: argparse.Namespace) -> int:
    """`vsmmu fuzz`: 0 nothing found, 1 findings, 2 a usage or input error."""
    try:
        if args.sarif and (why := unwritable_file(args.sarif, "--sarif")):
            raise CampaignError(why)
        if args.report and (why := unwritable_dir(args.report, "--report")):
            raise CampaignError(why)
        o = options_from_args(args)
        result = run(o)
    except CampaignError as e:
        print(f"vsmmu fuzz: {e}", file=sys.stderr)
        return 2
    if args.sarif:
        rules = sarif.invariant_rules()
        found = [sarif.finding(rules, f.invariant, f.signature, f.step, f.witness, [f.artifact],
                               f.design) for f in result.findings]
        if why := write_report(args.sarif, sarif.log(rules, found, version=fuzz_version())):
            result.errors.append(why)
    if args.report and (why := report.write(result, args.report, platform=o.platform,
                                             plant=o.plant)):
        result.errors.append(why)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(format_result(result))
    for error in result.errors:
        print(f"vsmmu fuzz: {error}", file=sys.stderr)
    return result.exit_code
