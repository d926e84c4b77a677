"""Writing a report: its text for the terminal, then the files asked for."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TextIO


def write_outputs(
    out: TextIO,
    text: str,
    *,
    csv_path: Path | None,
    write_csv: Callable[[TextIO], int],
    html_path: Path | None,
    render_html: Callable[[], str],
    error_type: type[Exception],
) -> None:
    """Print ``text``, write the files whose paths are given and name them.

    ``write_csv`` writes the rows to an open file and returns their count.
    A file that cannot be written raises ``error_type`` with the reason.
    """
    out.write(text + "\n")
    written = []
    if csv_path is not None:
        with _open_for_writing(csv_path, error_type, newline="") as file:
            count = write_csv(file)
        written.append(f"Wrote {csv_path} ({count} rows).")
    if html_path is not None:
        page = render_html()
        with _open_for_writing(html_path, error_type) as file:
            file.write(page)
        written.append(f"Wrote {html_path}.")
    if written:
        out.write("\n" + "\n".join(written) + "\n")


def _open_for_writing(
    path: Path, error_type: type[Exception], newline: str | None = None
) -> TextIO:
    try:
        return path.open("w", encoding="utf-8", newline=newline)
    except OSError as error:
        raise error_type(f"cannot write {path}: {error.strerror}") from None
