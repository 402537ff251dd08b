"""Figures a suite measures for the closing note: each is printed, listed
again in pytest's terminal summary and appended, time-stamped, to a file
in $DICOMSORT_BUILD_DIR, so a whole run's numbers can be read in one place
after ctest has swallowed the output."""

import os
import time


class Figures:
    def __init__(self, filename, title):
        self.filename = filename
        self.title = title
        self.lines = []

    def report(self, line):
        print(line, flush=True)
        self.lines.append(line)
        build = os.environ.get("DICOMSORT_BUILD_DIR")
        if build and os.path.isdir(build):
            with open(os.path.join(build, self.filename), "a") as f:
                f.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + line + "\n")

    def summary(self, terminalreporter):
        if self.lines:
            terminalreporter.section(self.title)
            for line in self.lines:
                terminalreporter.write_line(line)
