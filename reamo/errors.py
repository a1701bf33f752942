"""Exceptions the user is meant to read: each names the problem and the fix."""

from __future__ import annotations


class ReamoError(Exception):
    """Base class; the CLI prints these as one line instead of a traceback."""


class MediaError(ReamoError, ValueError):
    """Media that cannot be opened: missing, corrupt, empty, unsupported or over a configured limit."""


class CheckpointNotFoundError(ReamoError, FileNotFoundError):
    """A model file the user must provide is not where it was looked for."""


class ConfigError(ReamoError, ValueError):
    """A configuration value or flag that cannot work."""


class ProtocolError(ReamoError, ValueError):
    """Model output that breaks the protocol, raised only in strict parsing; carries the position."""

    def __init__(self, message: str, position: int, line: int, column: int) -> None:
        super().__init__(f"{message} (at line {line}, column {column}, offset {position})")
        self.position = position
        self.line = line
        self.column = column


class MissingDependencyError(ReamoError, ImportError):
    """An optional package is needed for this path; the message names the pip extra."""


class QueryRefusedError(ReamoError, PermissionError):
    """A read-only graph query that would read or write files or reach the network (COPY, LOAD FROM, INSTALL...)."""


class QueryError(ReamoError, ValueError):
    """Cypher the graph database rejected (syntax, unknown table or property); the message is the engine's."""


class ExtractionError(ReamoError, RuntimeError):
    """One request of a batch could not be extracted (its generation or back half failed); the others were."""
