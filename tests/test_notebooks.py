"""The stored notebooks: clean, parameterised, and reading from the environment's settings."""

import ast

import nbformat
import pytest

from shared.run import order

NOTEBOOKS = order.list_notebooks()
EXPECTED = ["00_data", "01_baseline_cnn", "02_vgg19_transfer", "03_inceptionv3_quasi_svm",
            "04_ensemble", "05_backbones", "06_fine_tuning_depth", "07_search", "08_ablations",
            "09_cross_validation", "10_data_quality"]


def test_the_experiment_and_study_notebooks_are_there():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs_or_execution_counts(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
             and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; run `make strip`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_has_one_parameters_cell_with_the_run_parameters(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
    names = {t.id for node in ast.parse(tagged[0].source).body if isinstance(node, ast.Assign)
             for t in node.targets if isinstance(t, ast.Name)}
    assert {"profile", "dataset", "run_dir"} <= names, f"{path.name}: parameters are {names}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_reads_like_a_paper_with_a_title_first(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    code = [c for c in nb.cells if c.cell_type == "code"
            and "parameters" not in c.metadata.get("tags", [])]
    # pipeline code lives in shared/: cells are short calls
    long_cells = [c.source.splitlines()[0] for c in code if len(c.source.splitlines()) > 15]
    assert not long_cells, f"{path.name}: cells too long for a notebook: {long_cells}"
