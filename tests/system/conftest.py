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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tools"))

from figures import Figures  # noqa: E402 (tests/tools, on the path above)

FIGURES = Figures("system-figures.txt", "dicomsortd system figures")
report_figure = FIGURES.report


def pytest_terminal_summary(terminalreporter):
    FIGURES.summary(terminalreporter)
