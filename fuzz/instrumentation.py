"""What the model harnesses (fuzz/harnesses/<target>_fuzzer.py) instrument for
coverage: the model and its invariant checks, not the plumbing every run
passes through the same way.

atheris puts a counter on every basic block of an instrumented module, which
makes instrumented code run about 2.5 times slower.  The modules in `PLUMBING`
are called hundreds of times per operation and branch only on what their
callers already branch on: bit-field access (concrete or symbolic), physical
memory (a bus error surfaces in its caller's handler), the table allocator,
the Z3 state checks' term building (it follows the shape of tables the
model's own coverage has seen), and the fuzzer's own reset and mutator (the
mutator runs outside the execution libFuzzer measures).  Leaving them out
made the instrumented system harness 1.5 times faster (51 to 76 executions a
second replaying a 60 s campaign's corpus, all invariants) and takes no branch
of the model or of the monitor's checks out of the coverage signal.

Deliberately free of imports: a harness reads it before instrumenting.
"""

INCLUDE = ("vsmmu", "properties", "fuzz")
PLUMBING = ("vsmmu.arch.fields", "vsmmu.arch.bv", "vsmmu.hw.memory", "vsmmu.sw.alloc",
            "properties.z3state", "properties.solver", "fuzz.snapshot", "fuzz.mutate")
