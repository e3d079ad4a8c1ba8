"""scripts/serve.py as a container's PID 1 waits for the orphans it inherits (`reap_orphans`) and never for
tritonserver's exit status, which its Popen reads.

A real PID 1 needs a container; here a child process makes itself a child subreaper (prctl
PR_SET_CHILD_SUBREAPER, Linux), which gives it exactly PID 1's inheritance: a grandchild whose parent exits
is re-parented to it. The stand-in for tritonserver leaves such an orphan behind, which exits while the
Supervisor's loop runs; the loop is run once without reaping (the orphan stays a zombie: the check can
fail) and once with it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"

_AS_INIT = r"""
import ctypes, json, os, subprocess, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import serve

PR_SET_CHILD_SUBREAPER = 36
assert ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0

# tritonserver's stand-in: a helper that forks an orphan (exits at 0.3 s) and is gone; exits 7 at 1.5 s.
SERVER = (
    "import os, subprocess, sys, time\n"
    "helper = subprocess.Popen([sys.executable, '-c', "
    "'import subprocess, sys; print(subprocess.Popen([\"sleep\", \"0.3\"]).pid, flush=True)'], stdout=subprocess.PIPE)\n"
    "print(helper.stdout.readline().decode().strip(), flush=True)\n"
    "helper.wait()\n"
    "time.sleep(1.5)\n"
    "sys.exit(7)\n"
)

def zombie_children():
    zombies = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            zombies.append(int(stat.parent.name))
    return zombies

results = {}
for reaps in (False, True):
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE)
    orphan = int(server.stdout.readline())
    supervisor = serve.Supervisor(server, Path(tempfile.mkdtemp()), 1.0, "http://127.0.0.1:9")
    supervisor.reaps_orphans = reaps
    code = supervisor.run()
    results[str(reaps)] = dict(code=code, orphan=orphan, zombies=zombie_children())
    serve.reap_orphans(server.pid)  # clean up before the next round
print(json.dumps(results))
"""


def test_pid_1_reaps_orphans_and_leaves_tritonservers_status():
    done = subprocess.run(
        [sys.executable, "-c", _AS_INIT, str(SCRIPTS)], capture_output=True, text=True, timeout=60, check=True
    )
    results = json.loads(done.stdout.splitlines()[-1])
    unreaped, reaped = results["False"], results["True"]
    assert unreaped["zombies"] == [unreaped["orphan"]]  # without reaping the orphan stays a zombie
    assert reaped["zombies"] == []
    assert unreaped["code"] == reaped["code"] == 7  # tritonserver's exit status reaches the Supervisor intact
