"""System suite (issue 10 section 7): the CPack .deb in a booted Debian 12
container with systemd as PID 1, the shipped unit unchanged.

Environment:
  DICOMSORT_BUILD_DIR     the built CMake tree (ctest sets it); cpack runs there
  DICOMSORT_SYSTEM_CACHE  where the debootstrap root is cached (default
                          $DICOMSORT_BUILD_DIR/system-cache); point it at a
                          folder that survives the build folder to reuse it
  DICOMSORT_SYSTEM_SEED   the seed of the random kill moments (printed at
                          every run, so a failure can be replayed)

Needs root, systemd-nspawn (systemd-container), debootstrap and the Debian
mirror named in apt's own sources the first time. Nothing here skips: a
machine that cannot boot the container fails the suite with the reason.
"""

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tools"))

FIGURES = []


def report_figure(line):
    """A figure for the closing note: printed, shown in the terminal summary
    and appended to $DICOMSORT_BUILD_DIR/system-figures.txt."""
    print(line, flush=True)
    FIGURES.append(line)
    build = os.environ.get("DICOMSORT_BUILD_DIR")
    if build and os.path.isdir(build):
        with open(os.path.join(build, "system-figures.txt"), "a") as f:
            f.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + line + "\n")


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("dicomsortd system figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
