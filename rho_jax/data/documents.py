"""Documents from local files (JSONL, CSV, text), with every skipped input counted, never dropped silently.

A missing file is an error naming it; empty documents, invalid UTF-8 and malformed JSON are skipped
and counted in a `SkipReport` (corpora.py logs it and writes it to PROVENANCE.json).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
import logging
from pathlib import Path
from typing import Iterable, Iterator, Optional

log = logging.getLogger(__name__)


class CorpusError(RuntimeError):
    pass


@dataclasses.dataclass
class SkipReport:
    """Counts of skipped inputs by reason, with the first few places each occurred: the one record of what
    a reader dropped (the corpora's PROVENANCE.json, and each prepared shard's sidecar via `counts_of`)."""

    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict = dataclasses.field(default_factory=dict)
    documents: int = 0

    def skip(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(where)

    def log(self, name: str) -> None:
        if self.counts:
            log.warning("%s: kept %d documents, skipped %s (e.g. %s)", name, self.documents, dict(self.counts),
                        self.examples)

    def counts_of(self, reasons: Iterable[str]) -> dict[str, int]:
        """{reason: count} over `reasons` (zeros included), then any other reason seen."""
        return {**{r: 0 for r in reasons}, **self.counts}

    def as_dict(self) -> dict:
        return {"documents": self.documents, "skipped": dict(self.counts), "skipped_examples": self.examples}


def _text(value) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        return "; ".join(str(v).strip() for v in value if str(v).strip())
    return "" if value is None else str(value).strip()


def read_lines(path: Path, report: SkipReport) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line) of a UTF-8 file; invalid UTF-8 lines are skipped and counted."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"corpus file {path} does not exist; check the path (or re-extract the asset)")
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                yield i, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                report.skip("invalid_utf8", f"{path}:{i} ({e.reason} at byte {e.start})")


def jsonl_documents(path: Path, fields: Iterable[str], report: SkipReport, group_by: Optional[str] = None,
                    where: str = "") -> Iterator[str]:
    """Documents from a JSONL file: the named fields of each record joined by blank lines."""
    fields = tuple(fields)
    groups: dict[str, list[str]] = {}
    for i, line in read_lines(path, report):
        if not line.strip():
            continue  # blank separator lines are not records
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            report.skip("malformed_json", f"{where or path}:{i} ({e.msg})")
            continue
        if not isinstance(record, dict):
            report.skip("malformed_json", f"{where or path}:{i} (not an object)")
            continue
        if group_by:
            key = _text(record.get(group_by))
            rest = "\n".join(_text(record.get(k)) for k in fields if k != group_by and _text(record.get(k)))
            groups.setdefault(key, []).append(rest)
            continue
        yield "\n\n".join(_text(record.get(k)) for k in fields if _text(record.get(k)))
    for key, parts in groups.items():
        yield "\n\n".join([key] + [p for p in parts if p]).strip()


def csv_documents(path: Path, fields: Iterable[str], report: SkipReport) -> Iterator[str]:
    rows = "".join(line for _, line in read_lines(path, report))
    for row in csv.DictReader(io.StringIO(rows)):
        yield "\n\n".join(_text(row.get(k)) for k in fields if _text(row.get(k)))


def file_documents(path: Path, report: SkipReport, field: str = "text") -> Iterator[str]:
    """Documents of a local `.jsonl` file (one `{field: ...}` per line) or a `.txt` file (one per line)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        yield from jsonl_documents(path, (field,), report)
    else:
        for _, line in read_lines(path, report):
            yield line.rstrip("\n")
