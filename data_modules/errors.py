"""Errors raised for dataset files that are missing, damaged or cannot be downloaded."""


class DataFileError(ValueError):
    """A dataset file on disk is unreadable or does not hold what its format promises.

    The message names the file, what was expected, what was found and how to fix it.
    """


class DatasetNotFoundError(FileNotFoundError):
    """Dataset files are missing and could not be (or were not allowed to be) downloaded.

    The message lists the missing files, every address tried and where to put the files by hand.
    """
