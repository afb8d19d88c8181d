"""The README's pictures, made from a real run: its index page as a browser shows it, and the
figures of the baseline's report.

    make pictures RUN=<run>    # docs/run-index.png, docs/report-figures.png

Needs a headless Chromium (`apt-get install chromium`) for the index page.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageChops

DOCS = Path(__file__).resolve().parent
NOTEBOOKS = DOCS.parent / "notebooks"
WIDTH = 900          # pixels of the pictures in the README
REPORT_FIGURES = ("training_curves", "confusion_matrix", "misclassified", "grad_cam")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise SystemExit("no Chromium found: install it (apt-get install chromium) to take the "
                     "screenshot of the index page")


def screenshot(page: Path, target: Path, width: int = 1200, height: int = 1800) -> Path:
    """A headless Chromium screenshot of ``page``, cropped to its content."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        "--hide-scrollbars", f"--screenshot={target}", page.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
    return save_small(crop(Image.open(target).convert("RGB")), target)


def crop(image: Image.Image, margin: int = 12) -> Image.Image:
    """``image`` without the white space around its content."""
    box = ImageChops.difference(image, Image.new("RGB", image.size, "white")).getbbox()
    if box is None:
        return image
    left, top, right, bottom = box
    return image.crop((max(left - margin, 0), max(top - margin, 0),
                       min(right + margin, image.width), min(bottom + margin, image.height)))


def montage(paths: list[Path], columns: int = 2, gap: int = 16) -> Image.Image:
    """The images of ``paths`` in a grid, each scaled to the same width."""
    cell = 700
    images = [Image.open(p).convert("RGB") for p in paths]
    images = [im.resize((cell, round(im.height * cell / im.width))) for im in images]
    rows = [images[i:i + columns] for i in range(0, len(images), columns)]
    heights = [max(im.height for im in row) for row in rows]
    sheet = Image.new("RGB", (columns * cell + (columns - 1) * gap,
                              sum(heights) + (len(rows) - 1) * gap), "white")
    y = 0
    for row, height in zip(rows, heights, strict=True):
        for j, im in enumerate(row):
            sheet.paste(im, (j * (cell + gap), y))
        y += height + gap
    return sheet


def save_small(image: Image.Image, target: Path) -> Path:
    if image.width > WIDTH:
        image = image.resize((WIDTH, round(image.height * WIDTH / image.width)), Image.LANCZOS)
    # 256 colours are plenty for figures and a page, at a fraction of the size
    image.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(target, optimize=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder, e.g. reports/my-run")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args(argv)
    index = args.run / "index.html"
    figures = [args.run / "baseline" / "figures" / f"{name}.png" for name in REPORT_FIGURES]
    missing = [str(p) for p in [index, *figures] if not p.is_file()]
    state = json.loads((args.run / "runner.json").read_text()) \
        if (args.run / "runner.json").is_file() else {}
    done = {n for n, r in state.get("notebooks", {}).items() if r.get("status") == "ok"}
    missing += sorted({p.stem for p in NOTEBOOKS.glob("*.ipynb")} - done)
    if missing:
        print(f"error: {args.run} is not a finished run of every notebook: missing "
              f"{', '.join(missing)}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    print(screenshot(index, args.out / "run-index.png"))
    print(save_small(montage(figures), args.out / "report-figures.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
