"""Turning `datasets`' own progress bars off for a block (they are global switches), restoring them after.

    with datasets_progress(enabled=False):
        dataset.map(...)
"""

from contextlib import contextmanager

from datasets.utils import logging as datasets_logging


@contextmanager
def datasets_progress(enabled: bool):
    was_enabled = datasets_logging.is_progress_bar_enabled()
    (datasets_logging.enable_progress_bar if enabled else datasets_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (datasets_logging.enable_progress_bar if was_enabled else datasets_logging.disable_progress_bar)()
