"""Errors that users can act on.

Library code raises these with a message that names the file, row or field at fault; the CLI
turns them into one clear line instead of a traceback.
"""


class RevisionError(Exception):
    """Base class: something the user can fix (bad input, missing artefact, bad config)."""


class InputError(RevisionError):
    """A file, row or field of user input is unusable."""


class MissingArtifactError(RevisionError):
    """A table or model that an earlier stage should have produced is absent."""


class ConfigError(RevisionError):
    """A config file (world, rules, ontology, plan) has a wrong key or value."""


class MissingExtraError(RevisionError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str):
        super().__init__(
            f"{package} is not installed; install it with: pip install 'revision[{extra}]'"
        )
