"""Run one of rundemo's programs so that it stops when rundemo is gone, however it went.

    python -m notify.management.demochild FD -m celery -A config worker ...
    python -m notify.management.demochild FD manage.py demoweb ...

FD is the read end of a pipe whose write end only rundemo holds, and never writes to:
reading it returns end-of-file once rundemo has exited. rundemo stops its children
itself on Ctrl-C, SIGTERM and SIGHUP, but a SIGKILL (kill -9, the OOM killer) runs no
handler, and the children run in sessions of their own, so nothing else reaches them:
left running, they kept the port (the next `make run` was refused) and a worker
consuming var/broker. A pipe works on every POSIX system, where prctl's
PR_SET_PDEATHSIG is Linux's only.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time

# As rundemo's STOP_TIMEOUT: how long a program has for its clean stop.
STOP_TIMEOUT = 15.0


def _watch(fd: int) -> None:
    while os.read(fd, 1):
        pass
    # The program's own clean stop (a worker's warm shutdown), as rundemo's would be.
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(STOP_TIMEOUT)
    os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> None:
    fd, *program = argv
    threading.Thread(target=_watch, args=(int(fd),), daemon=True).start()
    if program[0] == "-m":
        sys.argv = program[1:]
        runpy.run_module(program[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = program
        runpy.run_path(program[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
