"""One small exception hierarchy: every error the library raises on bad input is a HeadhunterError.

Messages name the bad value, what is allowed, and (where there is one) the fix. The CLI turns these
into click errors, so a user never sees a traceback for a mistake of theirs.
"""

from __future__ import annotations


class HeadhunterError(Exception):
    """Base class of all errors raised by headhunter on bad input or bad files."""


class HeadSetError(HeadhunterError, ValueError):
    """A head set, its file or its metadata is invalid, or does not fit the model it is applied to."""


class PluginError(HeadhunterError, LookupError):
    """A plugin name is unknown, registered twice, or a plugin is malformed."""


class ModelError(HeadhunterError, ValueError):
    """A model cannot be recognised, loaded or used as asked."""


class ObjectiveError(HeadhunterError, ValueError):
    """An objective cannot be created (missing weights, bad expression) or cannot score its input."""


class HubError(HeadhunterError):
    """A Hub repository or file cannot be found, fetched or published."""


class SearchError(HeadhunterError, ValueError):
    """A search cannot start or resume as asked (bad settings, mismatching checkpoint)."""


class ObjectiveOutputError(ObjectiveError, SearchError):
    """An objective plugin returned something other than one finite score per image (a search or atlas
    cannot go on with it: both an ObjectiveError and a SearchError)."""
