"""Shared fixtures of the command-line tests.

The binary under test comes from $AIRAVATA_BIN (scripts/test.sh sets it to
the release and then the sanitizer build); shared reference data from
$AIRAVATA_SHARED (default ../shared next to the repository).
"""
import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def airavata_bin():
    path = os.environ.get("AIRAVATA_BIN", str(REPO / "build" / "airavata"))
    if not os.path.exists(path):
        pytest.fail(f"airavata binary not found at {path}: build it with scripts/build.sh")
    return path


@pytest.fixture(scope="session")
def shared_dir():
    path = pathlib.Path(os.environ.get("AIRAVATA_SHARED", REPO.parent / "shared"))
    if not path.is_dir():
        pytest.fail(f"shared reference data not found at {path}: set AIRAVATA_SHARED")
    return path


@pytest.fixture(scope="session")
def fixtures_dir():
    return REPO / "tests" / "fixtures"


@pytest.fixture
def run(airavata_bin):
    """Runs the airavata binary with arguments; returns CompletedProcess."""

    def _run(*args, input=None, timeout=300, check=False):
        proc = subprocess.run([airavata_bin, *map(str, args)], input=input,
                              capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"airavata {' '.join(map(str, args))} exited "
                                 f"{proc.returncode}: {proc.stderr.decode(errors='replace')}")
        return proc

    return _run
