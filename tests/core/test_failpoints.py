import signal
import subprocess
import sys

from sftflow.tasks.core.failpoints import FAILPOINT_ENV

SCRIPT = """
from sftflow.tasks.core.failpoints import failpoint
failpoint("dedup:computed")
print("passed dedup:computed", flush=True)
failpoint("dedup:written")
print("passed dedup:written", flush=True)
"""


def _run(env_value):
    env = {**__import__("os").environ, FAILPOINT_ENV: env_value}
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          start_new_session=True)  # the failpoint kills its whole process group


def test_the_named_failpoint_kills_the_process_there():
    done = _run("dedup:written")
    assert done.returncode == -signal.SIGKILL
    assert done.stdout.splitlines() == ["passed dedup:computed"]


def test_other_failpoints_pass():
    done = _run("filter:written")
    assert done.returncode == 0
    assert done.stdout.splitlines() == ["passed dedup:computed", "passed dedup:written"]
