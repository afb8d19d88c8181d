"""Where training runs: one or several GPUs (``MirroredStrategy``), several machines
(``MultiWorkerMirroredStrategy`` from ``TF_CONFIG``), mixed precision and XLA.

Build and compile under ``strategy()``'s scope::

    with distribute.strategy().scope():
        model = models.build_transfer(...)
    history = train.fit_transfer(model, ...)  # compiles under model.distribute_strategy

``strategy()`` is a ``MirroredStrategy`` over the GPUs when more than one is visible, and a
``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names several workers (docs/gpus.md); then
only the chief worker (:func:`is_chief`) writes :func:`shared.training.fitting.fit`'s files, the
others write theirs to a temporary folder deleted when their process ends.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import keras
import tensorflow as tf
from keras.src.backend.tensorflow import trainer as keras_tf_trainer


def cluster_workers() -> int:
    """How many workers (chief included) ``TF_CONFIG`` names; 0 without TF_CONFIG."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return 0
    try:
        cluster = json.loads(text)["cluster"]
        return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"TF_CONFIG is not valid: expected JSON like {{\"cluster\": "
                         f"{{\"worker\": [\"host1:port\", ...]}}, \"task\": {{\"type\": "
                         f"\"worker\", \"index\": 0}}}} ({type(err).__name__}: {err})") from None


_MULTI_WORKER: list[tf.distribute.Strategy] = []


def strategy(devices: Sequence[str] | None = None) -> tf.distribute.Strategy:
    """``MirroredStrategy`` over ``devices``, or over all GPUs when more than one is visible;
    a ``MultiWorkerMirroredStrategy`` (one per process) when ``TF_CONFIG`` names more than one
    worker, whose first call must come before any other TensorFlow work of the process;
    otherwise the default strategy."""
    if not devices and cluster_workers() > 1:
        if not _MULTI_WORKER:
            _MULTI_WORKER.append(tf.distribute.MultiWorkerMirroredStrategy())
            _average_step_logs_over_workers()
            print(f"training on {_MULTI_WORKER[0].num_replicas_in_sync} replicas over "
                  f"{cluster_workers()} workers (MultiWorkerMirroredStrategy)")
        return _MULTI_WORKER[0]
    if devices:
        chosen = tf.distribute.MirroredStrategy(list(devices))
    elif len(tf.config.list_logical_devices("GPU")) > 1:
        chosen = tf.distribute.MirroredStrategy()
    else:
        return tf.distribute.get_strategy()
    print(f"training on {chosen.num_replicas_in_sync} replicas ({type(chosen).__name__})")
    return chosen


_JIT_COMPILE = {"on": False}


def set_jit_compile(on: bool) -> None:
    """Whether :func:`shared.training.fitting.fit` compiles models with XLA (``jit_compile``);
    :func:`shared.training.experiment.start` sets it from the experiment's ``jit_compile``
    setting."""
    _JIT_COMPILE["on"] = bool(on)


def jit_compile() -> bool:
    """Whether models are compiled with XLA (:func:`set_jit_compile`)."""
    return _JIT_COMPILE["on"]


def is_chief(chosen: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process writes results: True except on the non-chief workers of a
    multi-worker strategy (``chosen``, default the current one)."""
    chosen = chosen or tf.distribute.get_strategy()
    return bool(chosen.extended.should_checkpoint)


def enable_mixed_precision() -> bool:
    """Turn on mixed_float16 where TensorFlow sees a GPU (the models keep float32 outputs, and
    Keras wraps the optimizer in a LossScaleOptimizer when it compiles them). Returns whether
    it is on. Call it before building the models."""
    if not tf.config.list_physical_devices("GPU"):
        print("mixed precision: off (no GPU)")
        return False
    keras.mixed_precision.set_global_policy("mixed_float16")
    print("mixed precision: on (mixed_float16, float32 outputs)")
    return True


def build_for_multi_worker(model: keras.Model, dataset) -> None:
    """Keras 3's fit starts by averaging one distributed batch with ``strategy.reduce``, which
    a MultiWorkerMirroredStrategy cannot do for an (images, labels) pair
    (keras-team/keras#20585): build the compiled model's state from a local batch instead and
    skip that step (it only builds what is built here)."""
    with model.distribute_strategy.scope():
        model._symbolic_build(data_batch=next(iter(dataset)))
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None


def _average_step_logs_over_workers() -> None:
    """Keras 3's TensorFlow trainer averages each step's logs (scalars) over the workers of a
    MultiWorkerMirroredStrategy along an axis 0 they do not have (keras-team/keras#20585):
    average them as scalars instead, so every worker sees the same logs (and its callbacks
    decide alike)."""
    original = keras_tf_trainer.reduce_per_replica
    if getattr(original, "averages_scalars", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction == "auto" and keras_tf_trainer._collective_all_reduce_multi_worker(
                strategy):
            return keras.tree.map_structure(
                lambda value: strategy.reduce("MEAN", value, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica.averages_scalars = True
    keras_tf_trainer.reduce_per_replica = reduce_per_replica
