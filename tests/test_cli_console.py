"""Where results go: tables written to a file or a pipe keep their headers whole."""

import io

from rich.console import Console

from ksrnet.cli_console import PIPED_WIDTH, results_width


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_piped_results_are_not_cut_to_80_columns(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert results_width() == PIPED_WIDTH
    assert Console(width=results_width()).width == PIPED_WIDTH


def test_columns_and_terminals_keep_their_own_width(monkeypatch):
    monkeypatch.setattr("sys.stdout", io.StringIO())
    monkeypatch.setenv("COLUMNS", "100")
    assert results_width() is None and Console(width=results_width()).width == 100
    monkeypatch.delenv("COLUMNS")
    monkeypatch.setattr("sys.stdout", _Terminal())
    assert results_width() is None  # rich sizes a terminal itself
