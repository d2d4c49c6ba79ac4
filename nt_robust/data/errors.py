"""Exceptions raised by :mod:`nt_robust.data`.

Every error derives from :class:`DataError`, so callers can catch them all::

    try:
        ds = load_dataset("cifar10", download=False)
    except DataError as err:
        sys.exit(str(err))
"""

from __future__ import annotations


class DataError(Exception):
    """Base class for every data-loading problem."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """The dataset files were found nowhere and could not be downloaded."""


class ChecksumError(DataError, ValueError):
    """A file does not match the checksum of the official release."""


class DataFormatError(DataError, ValueError):
    """A file is truncated, malformed or holds values of the wrong shape."""
