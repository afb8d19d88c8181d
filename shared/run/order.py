"""Which notebooks a run holds, in which order they run, which may start when, and which a
rerun makes stale, from the notebooks' names and their metadata ``"shared"``:

    reads_run_results  true: reads every result of the run (the ensemble), so runs last
    after              the notebooks whose results it reads (names or number prefixes)

The 00 notebook prepares the run (it makes the split every other notebook reads) and runs
first. :mod:`shared.run.runner` executes what this module orders, with the parameters that
:func:`settings_from` reads from ``make run-all SET=...``.
"""

from __future__ import annotations

import ast
import contextlib
import json
import shlex
from pathlib import Path

from shared import config

READS_RUN_RESULTS = "reads_run_results"   # notebook metadata "shared": its key
AFTER = "after"                          # notebook metadata "shared": the notebooks it reads


def list_notebooks(folder: Path = config.NOTEBOOKS_DIR) -> list[Path]:
    """The notebooks of ``folder`` in name order."""
    return sorted(p for p in Path(folder).glob("*.ipynb") if not p.name.startswith("."))


def run_order(notebooks: list[Path]) -> list[Path]:
    """The order run-all executes ``notebooks`` in: name order, except that those which read
    the run's results (:func:`reads_run_results`, the ensemble) come after all the others, so
    that they see every experiment and study of the run, and those which prepare the run
    (:func:`prepares_run`) come before all the others."""
    return sorted(notebooks, key=group)   # stable: name order within each group


def find_notebook(name: str, folder: Path = config.NOTEBOOKS_DIR) -> Path:
    """A notebook by file name, with or without ``.ipynb``, or by its number prefix ("01")."""
    notebooks = list_notebooks(folder)
    stem = name.removesuffix(".ipynb")
    matches = [p for p in notebooks if p.stem == stem] or \
              [p for p in notebooks if p.stem.startswith(stem + "_")]
    if len(matches) != 1:
        names = ", ".join(p.stem for p in notebooks)
        raise ValueError(f"no single notebook matches NB={name!r}: choose one of {names}")
    return matches[0]


def shared_metadata(notebook: Path) -> dict:
    """The notebook's metadata ``"shared"`` ({} where it has none or cannot be read)."""
    try:
        metadata = json.loads(Path(notebook).read_text(encoding="utf-8")).get("metadata", {})
    except (OSError, ValueError):
        return {}
    return metadata.get("shared") or {}


def reads_run_results(notebook: Path) -> bool:
    """Whether ``notebook`` reads the other notebooks' results (the ensemble does): its
    metadata holds ``"shared": {"reads_run_results": true}``."""
    return bool(shared_metadata(notebook).get(READS_RUN_RESULTS))


def prepares_run(notebook: Path) -> bool:
    """Whether ``notebook`` prepares the run for the others: its number is 00 (the data
    notebook, which makes the run's split that every other notebook reads back)."""
    return Path(notebook).stem.split("_", 1)[0] == "00"


def group(notebook: Path) -> int:
    """0: prepares the run, 2: reads its results, 1: any other."""
    return 0 if prepares_run(notebook) else 2 if reads_run_results(notebook) else 1


def prerequisites(notebooks: list[Path]) -> dict[str, set[str]]:
    """For each of ``notebooks`` (by name), those among them that must have ended before it
    starts: the ones that prepare the run come before every other; all others come before
    those which read the run's results; these two groups run one after another, as listed;
    and a notebook waits for those named in its metadata ``"shared": {"after": [...]}`` (names
    or number prefixes, e.g. ``["01"]``): the notebooks whose results it reads. A named
    notebook that is not among ``notebooks`` is not waited for (``run --nb``). A name that
    matches no notebook of the folder, or notebooks that wait for each other, are a
    ValueError."""
    needs = {}
    for i, notebook in enumerate(notebooks):
        mine = group(notebook)
        before = {other.stem for j, other in enumerate(notebooks)
                  if group(other) < mine or (group(other) == mine != 1 and j < i)}
        read = reads_from(notebook)
        if notebook.stem in read:
            raise ValueError(f"{notebook.name}: its metadata \"after\" names itself")
        before |= read & {p.stem for p in notebooks}
        needs[notebook.stem] = before
    ended: set[str] = set()
    while len(ended) < len(needs):     # every notebook can start once those before it ended
        can = {name for name, before in needs.items() if name not in ended and before <= ended}
        if not can:
            waiting = ", ".join(sorted(set(needs) - ended))
            raise ValueError(f"the notebooks {waiting} wait for each other (their metadata "
                             f"\"after\", or the order of the groups): none could start")
        ended |= can
    return needs


def reads_from(notebook: Path) -> set[str]:
    """The notebooks (by name) whose results ``notebook`` reads: those its metadata "after"
    names. A name that matches no single notebook of its folder is a ValueError."""
    found = set()
    for name in shared_metadata(notebook).get(AFTER) or []:
        try:
            found.add(find_notebook(str(name), notebook.parent).stem)
        except ValueError as err:
            raise ValueError(f"{notebook}: metadata \"after\": {err}") from None
    return found


def mark_stale(state: dict, executed: Path) -> list[str]:
    """After ``executed`` ran, the completed notebooks that read results made before it are
    stale (a later run-all runs them again): those reading every result of the run, and those
    whose metadata "after" names it, or names a notebook made stale so; return their names."""
    reads_all, reads = {}, {}       # each notebook's metadata, read once
    for name in state["notebooks"]:
        source = executed.parent / f"{name}.ipynb"
        reads_all[name] = reads_run_results(source)
        with contextlib.suppress(ValueError):    # a broken "after" was named when it ran
            reads[name] = reads_from(source)
    stale, changed = [], [executed.stem]
    while changed:
        current = changed.pop()
        for name, record in state["notebooks"].items():
            if name == executed.stem or record.get("status") != "ok":
                continue
            if reads_all[name] or current in reads.get(name, ()):
                record.update(status="stale", error=f"made before {executed.stem} ran again")
                stale.append(name)
                changed.append(name)
    return stale


RUN_PARAMETERS = ("profile", "dataset", "run_dir")   # the runner gives these to every notebook


def notebook_parameters(notebook: Path) -> set[str]:
    """The names that its cell tagged ``parameters`` assigns."""
    cells = json.loads(Path(notebook).read_text(encoding="utf-8")).get("cells", [])
    names = set()
    for cell in cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell.get("source", ""))
            for node in ast.parse(source).body:
                targets = node.targets if isinstance(node, ast.Assign) else \
                    [node.target] if isinstance(node, ast.AnnAssign) else []
                names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _value(text: str, item: str):
    """A Python literal (80, True, None, "x", {...}), else the text itself (dihedral). Text
    opening a dict, list or tuple that is no literal is refused: the shell or SET's own
    quoting has most likely eaten the quotes of its keys, and as text it would break the
    notebook."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if text.lstrip().startswith(("{", "[", "(")):
            raise ValueError(f"SET item {item!r}: {text} is not a Python literal (were the "
                             "quotes of its strings lost?); quote the whole item, for example "
                             "SET=\"'architecture={\\\"filters\\\": 24}'\"") from None
        return text


def settings_from(spec: str | None, notebooks: list[Path]) -> dict[str, dict]:
    """Per notebook (by name), the parameters ``spec`` sets, as ``make run-all SET=...``
    writes them: items separated by spaces (shell quoting), each ``name=value`` (every notebook
    of ``notebooks`` that has the parameter ``name``) or ``NB.name=value`` (that notebook only;
    NB is its name or number prefix). Values are Python literals or plain words:
    ``SET="augment=dihedral 01.epochs=80"``. A parameter no notebook has, a notebook not
    among ``notebooks``, or a parameter the runner sets itself is a ValueError."""
    settings: dict[str, dict] = {}
    if not spec or not spec.strip():
        return settings
    names = {nb.stem: notebook_parameters(nb) for nb in notebooks}
    for item in shlex.split(spec):
        key, equals, text = item.partition("=")
        target, dot, name = key.rpartition(".") if "." in key else ("", "", key)
        name = name.strip()
        if not equals or not name.isidentifier():
            raise ValueError(f"SET item {item!r}: write name=value or NB.name=value, for example "
                             f"augment=dihedral or 01.epochs=80")
        if name in RUN_PARAMETERS:
            raise ValueError(f"SET item {item!r}: {name} is set by the run itself (PROFILE, "
                             f"DATA, RUN)")
        if dot:
            stem = find_notebook(target, notebooks[0].parent).stem
            if stem not in names:
                raise ValueError(f"SET item {item!r}: {stem} is not among the notebooks run")
            if name not in names[stem]:
                raise ValueError(f"SET item {item!r}: {stem} has no parameter {name!r}; its "
                                 f"parameters: {', '.join(sorted(names[stem]))}")
            chosen = [stem]
        else:
            chosen = [stem for stem, params in names.items() if name in params]
            if not chosen:
                raise ValueError(f"SET item {item!r}: no notebook run has a parameter {name!r}")
        for stem in chosen:
            settings.setdefault(stem, {})[name] = _value(text, item)
    return settings
