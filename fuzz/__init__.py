"""Fuzzing: op-program format, harnesses, mutators, campaign runner, triage, benchmarks."""
