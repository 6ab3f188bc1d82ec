"""Turn results into output: rich renderables for people, JSON for machines, markdown for PR
comments, GitHub workflow annotations for CI logs, one self-contained HTML page for CI artifacts.
Nothing here reads files or decides anything.

Every format is a ``Renderer``: one method per command, plus ``error`` for a run that ended in an
error. The methods are abstract, so a format that lacks one cannot even be instantiated, and
``RENDERERS`` is the one table the CLI picks a format from.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:  # the results' modules; check/resize/merge pull in more than a scan needs
    from inspector.check import Fleet
    from inspector.convert import ConvertResult
    from inspector.diagnose import Diagnosis
    from inspector.diff import DiffResult
    from inspector.merge import MergeResult
    from inspector.repair import ResizeResult
    from inspector.scan import ScanResult
    from inspector.verify import VerifyResult

Out = TypeVar("Out")
COMMANDS = ("scan", "diff", "check", "resize", "merge", "convert", "verify")


@dataclass(frozen=True)
class Failure:
    """A run that ended in ``Error:``/``Hint:`` (exit 2, a refusal, an interruption), for the formats
    that report it on stdout as well."""

    command: str | None  # None: the command line named none (or no known one)
    message: str
    path: str | None
    hint: str


@dataclass(frozen=True)
class Options:
    step_summary: bool = False  # github: the full report also goes to $GITHUB_STEP_SUMMARY


class Renderer(ABC, Generic[Out]):
    """One output format."""

    @abstractmethod
    def scan(self, result: ScanResult) -> Out: ...

    @abstractmethod
    def diff(self, result: DiffResult) -> Out: ...

    @abstractmethod
    def check(self, result: Diagnosis) -> Out: ...

    @abstractmethod
    def check_many(self, fleet: Fleet) -> Out:
        """``check BASE ADAPTER ADAPTER ...``: each adapter, then a table of them (one adapter: ``check``)."""

    @abstractmethod
    def resize(self, result: ResizeResult) -> Out: ...

    @abstractmethod
    def merge(self, result: MergeResult) -> Out: ...

    @abstractmethod
    def convert(self, result: ConvertResult) -> Out: ...

    @abstractmethod
    def verify(self, result: VerifyResult) -> Out: ...

    @abstractmethod
    def error(self, failure: Failure) -> Out | None:
        """What stdout gets for a failed run (stderr has Error/Hint already); None: nothing."""


def _rich(options: Options) -> Renderer:
    from inspector.report.terminal import Terminal  # rich is imported only for the rich format

    return Terminal()


def _json(options: Options) -> Renderer:
    from inspector.report.jsonfmt import Json

    return Json()


def _markdown(options: Options) -> Renderer:
    from inspector.report.markdown import Markdown

    return Markdown()


def _html(options: Options) -> Renderer:
    from inspector.report.htmlfmt import Html

    return Html()


def _github(options: Options) -> Renderer:
    from inspector.report.github import GitHub

    return GitHub(step_summary=options.step_summary)


# --format value -> the renderer's factory (modules are imported on use: a JSON run loads no rich).
RENDERERS: dict[str, Callable[[Options], Renderer]] = {"rich": _rich, "json": _json, "markdown": _markdown, "github": _github, "html": _html}
FORMATS = tuple(RENDERERS)


def renderer(fmt: str, options: Options = Options()) -> Renderer:
    return RENDERERS[fmt](options)
