"""Run a command and report its peak resident set size: `python bench/peak_rss.py CMD ARGS...`.

Prints `peak_rss_kib=N` as the last line on stderr and exits with the command's status. It runs
as a small process of its own because Linux carries a parent's high-water RSS into a forked
child: measured straight from the benchmark (which holds two models), every child would
report at least the benchmark's own peak.
"""

import resource
import subprocess
import sys

status = subprocess.call(sys.argv[1:])
print(f"peak_rss_kib={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}", file=sys.stderr)
sys.exit(status)
