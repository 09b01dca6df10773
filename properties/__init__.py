"""Isolation invariants: concrete per-step oracles, Z3 encodings and universal proofs."""
