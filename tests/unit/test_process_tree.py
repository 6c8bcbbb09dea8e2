import signal
import subprocess
import sys
import time

import psutil

from tests.support.eventually import eventually
from workers.process_tree import ChildProcess

SCRIPT = """
import signal, subprocess, sys, time
g = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                      "print('up', flush=True); time.sleep(60)"])
print(g.pid, flush=True)
time.sleep(60)
"""


def test_stop_reaches_a_grandchild_that_ignores_sigterm():
    child = ChildProcess([sys.executable, "-c", SCRIPT])
    lines = child.lines()
    grandchild = int(next(lines))
    assert next(lines) == "up"
    started = time.monotonic()
    killed = child.stop(grace_s=0.5)
    assert time.monotonic() - started >= 0.5
    assert killed == [grandchild]
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE


def gone(pid: int) -> bool:
    """No such process, or only its zombie."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_leftovers_of_a_finished_leader_are_reaped():
    leader = ChildProcess(
        [
            sys.executable,
            "-c",
            "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(60)']); print(p.pid, flush=True)",
        ]
    )
    orphan = int(next(leader.lines()))
    assert leader.wait() == 0
    assert psutil.pid_exists(orphan)
    leader.reap_leftovers()
    eventually(lambda: gone(orphan), 5, f"the orphan {orphan} to be reaped")
    assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE


ORPHANED = """
import sys, time
from workers.process_tree import ChildProcess
child = ChildProcess([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"])
lines = child.lines()
assert next(lines) == "up"
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_child_whose_starter_is_killed_gets_sigterm():
    starter = subprocess.Popen([sys.executable, "-c", ORPHANED], stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(starter.stdout.readline()))
    assert child.cmdline()[-1] == "import time; print('up', flush=True); time.sleep(60)"  # the command itself
    starter.kill()
    starter.wait()
    gone, _ = psutil.wait_procs([child], timeout=10)
    assert gone and gone[0].returncode in (-signal.SIGTERM, None)
