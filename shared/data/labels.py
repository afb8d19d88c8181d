"""A dataset's labels file (form 4 of :mod:`shared.data.sources`): its rows read, decoded and
checked into file name → label, and the class order of its labels."""

from __future__ import annotations

import codecs
import csv
import io
import json
import unicodedata
from pathlib import Path

from shared.data.messages import some


def read_labels(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """File name → label (as text) from a labels CSV or JSON, with clear errors; and file
    name → line of the CSV (empty for JSON), for messages.

    Read as people write them: UTF-8 with or without a byte-order mark (or UTF-16 with one),
    CRLF or LF line ends, blank lines, names in double quotes (with commas), the columns
    filename and label in any order and case among others, a ``;`` or tab delimiter, names
    with sub-folders (``/`` or ``\\``, ``./`` at the start).
    """
    text = _text_of(path)
    if path.suffix.lower() == ".json":
        def no_duplicates(pairs):
            seen = {}
            for key, value in pairs:
                if key in seen:
                    raise ValueError(f"labels file {path.name}: duplicate entry for {key!r}")
                seen[key] = value
            return seen
        try:
            raw = json.loads(text, object_pairs_hook=no_duplicates)
        except json.JSONDecodeError as err:
            raise ValueError(f"labels file {path.name} is not valid JSON: {err}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"labels file {path.name} must be a JSON object "
                             '{"file name": label, ...}')
        rows = [(0, _clean_name(str(k)), v) for k, v in raw.items()]
    elif path.suffix.lower() == ".csv":
        rows = _csv_rows(path.name, text)
    else:
        raise ValueError(f"labels file {path.name}: expected a .csv or .json file")
    lines = {name: line for line, name, _ in rows if line}
    seen = {}
    for line, name, _ in rows:
        seen.setdefault(unicodedata.normalize("NFC", name), []).append((name, line))
    dup = {entries[0][0]: [line for _, line in entries] for entries in seen.values()
           if len(entries) > 1}
    if dup:
        where = [str(n) for lines_of in dup.values() for n in lines_of][:6]
        raise ValueError(f"labels file {path.name} has duplicate rows for {some(sorted(dup))} "
                         f"(lines {', '.join(where)})")
    return _validate_labels([(name, label) for _, name, label in rows], path.name,
                            lines), lines


def _text_of(path: Path) -> str:
    """A labels file's text: UTF-8 (a BOM from Excel is no part of the header) or UTF-16
    with a BOM; other bytes are an error naming the line."""
    raw = path.read_bytes()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ValueError(f"labels file {path.name} line {line}: not UTF-8 text (byte "
                         f"{raw[err.start]:#04x}); save it as UTF-8 (Excel: 'CSV UTF-8')"
                         ) from None


def _csv_rows(name: str, text: str) -> list[tuple[int, str, str]]:
    """(line, file name, label) of each row of a labels CSV; the line is where the row ends."""
    first = text.lstrip().split("\n", 1)[0]
    delimiter = next((d for d in (",", ";", "\t") if d in first), ",")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter,
                        skipinitialspace=True)
    try:
        header = next((row for row in reader if any(c.strip() for c in row)), [])
        columns = [c.strip().lower() for c in header]
        if not header:
            raise ValueError(f"labels file {name} is empty; expected the header "
                             "'filename,label' and a row per image")
        if "filename" not in columns or "label" not in columns:
            raise ValueError(f"labels file {name} has the header "
                             f"{','.join(c.strip() for c in header)!r}; expected "
                             "'filename,label' (other columns may follow)")
        at_name, at_label = columns.index("filename"), columns.index("label")
        rows = []
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            line = reader.line_num
            if len(row) <= max(at_name, at_label) or any(c.strip() for c in row[len(header):]):
                raise ValueError(
                    f"labels file {name} line {line}: {len(row)} field(s) where the header "
                    f"has {len(header)} ({delimiter.join(c.strip() for c in header)}): "
                    f"{delimiter.join(row)!r}; put a file name with a {delimiter!r} in double "
                    "quotes")
            rows.append((line, _clean_name(row[at_name]), row[at_label].strip()))
    except csv.Error as err:
        raise ValueError(f"labels file {name} line {reader.line_num}: {err}") from None
    return rows


def _clean_name(name: str) -> str:
    """A listed file name as a relative POSIX path: stripped, ``\\`` → ``/``, no ``./``."""
    name = name.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def line_of(lines: dict[str, int], name: str) -> str:
    """" (line n)" where ``lines`` knows the line of ``name`` (a CSV row), else ""."""
    return f" (line {lines[name]})" if name in lines else ""


def _validate_labels(pairs, name: str, lines: dict[str, int] | None = None) -> dict[str, str]:
    lines = lines or {}
    bad = []
    labels = {}
    for file, label in pairs:
        if isinstance(label, bool) or not isinstance(label, (str, int, float)):
            bad.append(f"{file!r}: {label!r}{line_of(lines, file)}")
            continue
        if isinstance(label, float):
            if not label.is_integer():
                bad.append(f"{file!r}: {label!r}{line_of(lines, file)}")
                continue
            label = int(label)
        text = str(label).strip()
        if not text or not str(file).strip():
            bad.append(f"{file!r}: {label!r}{line_of(lines, file)}")
            continue
        labels[str(file).strip()] = text
    if bad:
        raise ValueError(f"labels file {name} has unknown (empty or non-scalar) labels: "
                         f"{some(bad)}")
    if not labels:
        raise ValueError(f"labels file {name} has no rows")
    numeric = {v for v in labels.values() if _is_int(v)}
    if numeric and len(numeric) < len(set(labels.values())):
        text_labels = sorted({v for v in labels.values() if not _is_int(v)})
        files_of = [f"{f!r}: {v!r}{line_of(lines, f)}" for f, v in labels.items()
                    if v in text_labels]
        raise ValueError(f"labels file {name} mixes integer class labels with unknown labels "
                         f"{some(text_labels)} (e.g. {some(files_of)})")
    return labels


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def order_labels(labels: set[str]) -> list[str]:
    """Class names in order: numerically where all are integers, else as strings."""
    if all(_is_int(v) for v in labels):
        return sorted(labels, key=int)
    return sorted(labels)
