"""Errors a user can act on.

Every error raised for bad input derives from :class:`ProxytasksError`; the CLI turns
it into a one-paragraph message on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations


class ProxytasksError(Exception):
    """Bad input or a missing resource: the message says what, where and what to do."""

    exit_code = 2


class ManifestError(ProxytasksError):
    """A manifest that breaks Contract 1; ``problems`` lists every defect found."""

    def __init__(self, problems: list[str], limit: int = 50) -> None:
        self.problems = list(problems)
        shown = self.problems[:limit]
        more = len(self.problems) - len(shown)
        text = "\n".join(shown)
        if more > 0:
            text += f"\n... and {more} more problem(s)"
        super().__init__(text)
