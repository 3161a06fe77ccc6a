import logging
import os

import pytest

# One torch process on two cores: keep tests from oversubscribing threads in subprocesses.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """A command run in-process (a Hydra app's `main`) configures the root logger with a handler
    on the stderr of that moment, which pytest's capture closes after the test: later log records
    (pydicom's warnings, ...) would then print 'Logging error' tracebacks into other tests'
    stderr. Put the root logger back as it was after every test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
