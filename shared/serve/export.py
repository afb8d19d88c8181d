"""Export a finished experiment's model for serving, and check the export.

    python -m shared.serve.export --model <run>/<experiment> --format savedmodel|tflite|onnx [--out
    DIR] make export MODEL=<run>/<experiment> FORMAT=savedmodel|tflite|onnx [OUT=<folder>]

The model is written through Keras' own export (``model.export``: a TensorFlow SavedModel, or
ONNX through tf2onnx) or TensorFlow Lite's converter from that SavedModel. Every model of the
project does its own preprocessing (rescaling, the backbone's ``preprocess_input``), so the
export takes float32 pixels in [0, 255], (N, size, size, 3), and returns class probabilities.

The check: the exported model and the Keras model predict the same test images of the run
(its ``split.csv``; random pixels when the run's data is gone); the largest difference of a
probability must stay within the format's tolerance and every predicted class must agree. The
figures go to ``<out>/parity.json``; a failed check is an error. ``<out>`` defaults to
``<experiment>/export/<format>``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from shared.files import read_json, write_json
from shared.serve import loading, predict

FORMATS = ("savedmodel", "tflite", "onnx")
# largest allowed difference of a probability between the Keras model and its export
TOLERANCE = {"savedmodel": 1e-5, "tflite": 1e-4, "onnx": 1e-4}
CHECK_IMAGES = 16


class ExportError(ValueError):
    """A bad format, or an export whose check failed."""


def export(model: str | Path, fmt: str, out: str | Path | None = None,
           images: int = CHECK_IMAGES) -> dict:
    """Export the model of an experiment folder in ``fmt``, check it against the Keras model
    on ``images`` test images, write ``parity.json`` beside it and return that check."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown FORMAT {fmt!r}: choose one of {', '.join(FORMATS)}")
    folder = loading.resolve_model_dir(model)
    metrics = loading.read_metrics(folder, "image_size", "class_names")
    keras_model = loading.load_model(folder)
    out = Path(out) if out else folder / "export" / fmt
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pixels, source = sample_pixels(folder, metrics["image_size"], images)
    expected = keras_model.predict(pixels, verbose=0)
    run_exported = {"savedmodel": _savedmodel, "tflite": _tflite, "onnx": _onnx}[fmt]
    got = run_exported(keras_model, out, pixels)
    difference = float(np.abs(got - expected).max())
    check = {"format": fmt, "model": str(folder), "exported_to": str(out), "images": len(pixels),
             "images_from": source, "max_abs_difference": difference,
             "tolerance": TOLERANCE[fmt],
             "same_predicted_class": bool((got.argmax(1) == expected.argmax(1)).all())}
    check["passed"] = difference <= TOLERANCE[fmt] and check["same_predicted_class"]
    write_json(out / "parity.json", check)
    if not check["passed"]:
        raise ExportError(f"the {fmt} export in {out} differs from the Keras model by "
                          f"{difference:.2g} (tolerance {TOLERANCE[fmt]:g}); see parity.json")
    return check


def sample_pixels(folder: Path, size: int, count: int) -> tuple[np.ndarray, str]:
    """Up to ``count`` test images of the experiment's run, as the model takes them; random
    pixels (seeded) when the run's split or its images are not there."""
    run = folder.parent
    try:
        frame = pd.read_csv(run / "split.csv", dtype=str, keep_default_na=False)
        root = Path(read_json(run / "dataset.json")["root"])
        test = frame[frame["split"] == "test"].head(count)
        paths = [root / p for p in test["path"]]
        if paths and all(p.is_file() for p in paths):
            batches = predict.images_dataset(paths, size, count)
            return np.concatenate([b.numpy() for b in batches]), f"{len(paths)} test images"
    except (OSError, ValueError, KeyError):
        pass
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (count, size, size, 3)).astype("float32"), "random pixels"


def _savedmodel(model, out: Path, pixels: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    model.export(str(out), format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(str(out))   # held: its variables live as long as it does
    return np.asarray(loaded.serve(pixels))


def _tflite(model, out: Path, pixels: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    saved = out / "savedmodel"
    model.export(str(saved), format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    path = out / "model.tflite"
    path.write_bytes(converter.convert())
    shutil.rmtree(saved)
    interpreter = tf.lite.Interpreter(model_path=str(path))
    (inputs,), (outputs,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(inputs["index"], pixels.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inputs["index"], pixels)
    interpreter.invoke()
    return interpreter.get_tensor(outputs["index"])


def _onnx(model, out: Path, pixels: np.ndarray) -> np.ndarray:
    import onnxruntime

    path = out / "model.onnx"
    model.export(str(path), format="onnx", verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: pixels})[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.serve.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="<run>/<experiment>, relative to reports/")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", default=None, help="folder (default <experiment>/export/<fmt>)")
    args = parser.parse_args(argv)
    try:
        check = export(args.model, args.format, args.out)
    except (ExportError, loading.PredictError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{check['format']} export in {check['exported_to']}: largest difference "
          f"{check['max_abs_difference']:.2g} on {check['images_from']} (tolerance "
          f"{check['tolerance']:g}), same predicted classes: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
