"""Where the built programs under test are, for every pytest suite.

Owns one rule: a program is named by its own environment variable (ctest
sets them all), else it is DICOMSORT_BUILD_DIR/<program>. A test that
cannot run without it skips and says which variable to set; a suite that
wants a wrong path to be an error passes broken=pytest.fail.
"""

import os

import pytest

ENV = {
    "dicomsort": "DICOMSORT_BIN",
    "dicomsortd": "DICOMSORTD_BIN",
    "dicomsortd-generator": "DICOMSORTD_GENERATOR_BIN",
}


def binary_path(name):
    """The absolute path $ENV[name] names, else DICOMSORT_BUILD_DIR/name;
    None when neither is set. Not checked."""
    path = os.environ.get(ENV[name])
    if not path and os.environ.get("DICOMSORT_BUILD_DIR"):
        path = os.path.join(os.environ["DICOMSORT_BUILD_DIR"], name)
    return os.path.abspath(path) if path else None


def built_binary(name, broken=pytest.skip):
    """binary_path(name) when it is an executable. Unset: the test skips;
    set to something else: broken(reason) (a skip unless told)."""
    path = binary_path(name)
    if not path:
        pytest.skip("%s is not set: it must name the built %s (ctest sets "
                    "it, or DICOMSORT_BUILD_DIR)" % (ENV[name], name))
    if not os.access(path, os.X_OK):
        broken("%s=%s is not an executable" % (ENV[name], path))
    return path
