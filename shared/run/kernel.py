"""The Jupyter kernel the notebooks run in, one notebook executed by papermill in a child
process (``python -m shared.run.kernel <notebook> <output> <parameters> <result>``, which imports
no TensorFlow), and its executed copy rendered to HTML."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import resource
import signal
import sys
import tempfile
from pathlib import Path

from shared import progress
from shared.files import read_json, write_json, write_text

KERNEL_NAME = "image-classification"
KERNEL_OPTIONS = ("--IPKernelApp.capture_fd_output=False",)


def ensure_kernel() -> str:
    """Install (idempotently) a kernelspec for this interpreter into its own prefix and return
    its name, so notebooks never depend on a kernel named in their metadata.

    The kernel leaves the C-level output of libraries (TensorFlow's C++ log lines, printed
    before its logging is set up and not silenced by TF_CPP_MIN_LOG_LEVEL) on its process's
    own output (which the runner writes to the notebook's log) instead of copying it into the
    notebook, where a reader would take it for an error.
    Python's own output, warnings and errors still go to the notebook."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        if spec.argv and Path(spec.argv[0]) == Path(sys.executable) \
                and all(arg in spec.argv for arg in KERNEL_OPTIONS):
            return KERNEL_NAME
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    folder = Path(install(kernel_name=KERNEL_NAME, display_name="Python (image-classification)",
                          prefix=sys.prefix))
    spec = read_json(folder / "kernel.json")
    spec["argv"] += [arg for arg in KERNEL_OPTIONS if arg not in spec["argv"]]
    write_json(folder / "kernel.json", spec)
    return KERNEL_NAME


class CellProgress(logging.Handler):
    """Reports the cell papermill starts ("Executing Cell N") as the notebook's progress."""

    def __init__(self, cells: int):
        super().__init__()
        self.cells = cells

    def emit(self, record: logging.LogRecord) -> None:
        match = re.match(r"Executing Cell (\d+)", record.getMessage())
        if match:
            progress.report("cell", cell=int(match.group(1)), cells=self.cells)


def execute_child(notebook: str, output: str, parameters: str, result: str) -> int:
    """Run inside the child process: execute one notebook, record the kernel's peak memory."""
    import nbformat
    import papermill

    logging.basicConfig(level=logging.INFO, format="    %(message)s", stream=sys.stdout)
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C is the runner's to handle
    outcome = {"status": "ok", "error": None}
    try:
        cells = len(nbformat.read(notebook, as_version=4).cells) + 1   # + papermill's parameters
        logging.getLogger("papermill").addHandler(CellProgress(cells))
        with private_kernel(ensure_kernel()) as km:
            papermill.execute_notebook(notebook, output, parameters=json.loads(parameters),
                                       kernel_name=km.kernel_name, language="python",
                                       progress_bar=False, log_output=True, km=km,
                                       cwd=str(Path(notebook).parent))
    except papermill.PapermillExecutionError as err:
        outcome = {"status": "failed", "error": f"{err.ename}: {err.evalue}".strip()[:500]}
        traceback = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(err.traceback or []))
        print(f"cell {err.exec_count} failed:\n{traceback}", flush=True)   # into the log
    except Exception as err:  # noqa: BLE001 - any failure to start is reported, not raised
        outcome = {"status": "failed", "error": f"{type(err).__name__}: {err}"[:500]}
    # ru_maxrss of waited-for children (the kernel) is in KiB on Linux.
    outcome["peak_memory_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                                      / 1024, 1)
    write_json(result, outcome)
    return 0 if outcome["status"] == "ok" else 1


@contextlib.contextmanager
def private_kernel(kernel_name: str):
    """A kernel manager whose kernel listens on Unix sockets in a folder only this user can
    enter (IPC transport), not on TCP ports that any user of the machine could reach."""
    from jupyter_client.manager import KernelManager

    with tempfile.TemporaryDirectory(prefix="kernel-") as folder:   # created 0700
        km = KernelManager(kernel_name=kernel_name, transport="ipc",
                           ip=os.path.join(folder, "ipc"))
        # given a manager, papermill leaves its kernel running: stop and reap it (at once
        # when the notebook is being stopped: a polite request waits for the running cell)
        try:
            yield km
        except BaseException:
            if km.has_kernel:
                km.shutdown_kernel(now=True)
            raise
        if km.has_kernel:
            km.shutdown_kernel(now=False)


def render_html(ipynb: Path) -> str | None:
    """Render an executed notebook to a self-contained HTML file beside it."""
    import nbformat
    from nbconvert import HTMLExporter

    try:
        body, _ = HTMLExporter(template_name="lab").from_notebook_node(
            nbformat.read(ipynb, as_version=4))
    except Exception as err:  # noqa: BLE001 - a rendering problem must not lose the run
        print(f"    could not render {ipynb.name} to HTML: {err}")
        return None
    target = ipynb.with_suffix(".html")
    write_text(target, body)
    return target.name


if __name__ == "__main__":
    sys.exit(execute_child(*sys.argv[1:5]))
