"""The exit status of every `vsmmu` command (documented in `vsmmu --help`)."""

CLEAN = 0  # nothing found, every proof proved
FINDINGS = 1  # a violation, a divergence, a proof that failed
USAGE = 2  # a usage or input error: one line on stderr
INTERNAL_ERROR = 3  # a bug of ours: one line on stderr, the traceback in a log file
INTERRUPTED = 130  # SIGINT, SIGTERM or SIGHUP
