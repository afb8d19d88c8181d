"""keras.applications backbones: the table of those the project knows, their preprocessing
as a registered layer, where their weights come from, and the batch-norm calibration of a
random one.

ImageNet weights policy: ``weights="imagenet"`` loads the file from the Keras cache
(``~/.keras/models``, or ``$KERAS_HOME/models``) or downloads it. When neither works (no
network), one sentence says so and how to get the file, the backbone starts from random
initialisation and ``model.weights_source`` is ``"random (imagenet unavailable)"``;
``require_pretrained=True`` raises :class:`WeightsUnavailableError` instead. ``make weights``
(``python -m shared.models.backbones weights vgg19 inceptionv3``) fills the cache where there is
network.

``weights=<path>`` loads a weights file of the backbone alone: what
``model.get_layer("backbone").save_weights("x.weights.h5")`` writes, or a keras.applications
``*_notop.h5`` ImageNet file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers, ops

DOWNLOAD_TIMEOUT_S = 30  # per socket operation, so a silently dropped connection cannot hang


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights were required but are neither cached nor downloadable."""


# --------------------------------------------------------------------------------------------
# Backbones


ADDITIONS = "<every Add layer>"


@dataclass(frozen=True)
class Backbone:
    """How to build one keras.applications backbone."""

    constructor: str     # function of keras.applications
    module: str          # keras.applications submodule holding its preprocess_input
    min_size: int        # smallest input side keras.applications accepts without the top
    weights_file: str    # its ImageNet weights (no top) in the Keras cache, models/<file>
    stages: tuple[str, ...] = ()  # the layers that end each block, bottom to top (see cut);
    # ADDITIONS stands for every residual Add layer, in order (Xception leaves them unnamed)
    additions: int = 0   # how many those are
    params: float = 0.0  # millions of parameters without the top (keras.applications' table)

    @property
    def blocks(self) -> int:
        return len(self.stages) + (self.additions - 1 if ADDITIONS in self.stages else 0)


_VGG_STAGES = tuple(f"block{i}_pool" for i in range(1, 6))
BACKBONES: dict[str, Backbone] = {
    "vgg16": Backbone("VGG16", "vgg16", 32, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                      _VGG_STAGES, params=14.7),
    "vgg19": Backbone("VGG19", "vgg19", 32, "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
                      _VGG_STAGES, params=20.0),
    "inceptionv3": Backbone("InceptionV3", "inception_v3", 75,
                            "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                            tuple(f"mixed{i}" for i in range(11)), params=21.8),
    "inceptionresnetv2": Backbone("InceptionResNetV2", "inception_resnet_v2", 75,
                                  "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
                                  ("mixed_5b", "block35_10_ac", "mixed_6a", "block17_20_ac",
                                   "mixed_7a", "conv_7b_ac"), params=54.3),
    "xception": Backbone("Xception", "xception", 71,
                         "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
                         (ADDITIONS, "block14_sepconv2_act"), additions=12, params=20.9),
    "resnet50v2": Backbone("ResNet50V2", "resnet_v2", 32,
                           "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
                           ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out",
                            "post_relu"), params=23.6),
    # the transition blocks (pool*_pool) end before each dense block but the first
    "densenet121": Backbone("DenseNet121", "densenet", 32,
                            "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
                            ("pool2_pool", "pool3_pool", "pool4_pool", "relu"), params=7.0),
    "efficientnetb0": Backbone("EfficientNetB0", "efficientnet", 32, "efficientnetb0_notop.h5",
                               ("block1a_project_bn", "block2b_add", "block3b_add", "block4c_add",
                                "block5c_add", "block6d_add", "block7a_project_bn",
                                "top_activation"), params=4.0),
}


def backbone_spec(name: str) -> Backbone:
    """The :class:`Backbone` of ``name``; an unknown name lists the valid ones."""
    key = str(name).lower()
    if key not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}")
    return BACKBONES[key]


@keras.saving.register_keras_serializable(package="shared")
class BackbonePreprocess(layers.Layer):
    """The keras.applications ``preprocess_input`` of ``backbone``, as a serialisable layer.

    Takes RGB images in [0, 255]. Runs in float32 also under mixed precision.
    """

    def __init__(self, backbone: str, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.backbone = str(backbone).lower()
        spec = backbone_spec(self.backbone)
        self._preprocess = getattr(keras.applications, spec.module).preprocess_input

    def call(self, images):
        return self._preprocess(ops.cast(images, self.compute_dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone}


def keras_cache_dir() -> Path:
    """The folder where keras.applications looks for (and downloads) weights files."""
    try:
        from keras.src.backend.config import keras_home
        base = os.path.expanduser(keras_home())
    except ImportError:  # private helper moved: same rule as Keras
        base = os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras"))
    if not os.access(base, os.W_OK):  # keras.utils.get_file falls back the same way
        base = os.path.join(tempfile.gettempdir(), ".keras")
    return Path(base) / "models"


def build_backbone(name: str, input_shape, *, weights="imagenet",
                   require_pretrained: bool = False) -> tuple[keras.Model, str]:
    """The keras.applications model ``name`` without its top, named "backbone", and where its
    weights came from ("imagenet", "random", "random (imagenet unavailable)" or the path).

    ``input_shape`` is (height, width, 3). See the module docstring for the weights policy.
    """
    key = str(name).lower()
    spec = backbone_spec(key)
    if weights is None:
        return _application(spec, input_shape, None), "random"
    if weights == "imagenet":
        return _imagenet_backbone(key, spec, input_shape, require_pretrained)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights of backbone {key!r} must be 'imagenet', None or an "
                                f"existing weights file; not found: {path}")
    model = _application(spec, input_shape, None)
    try:
        model.load_weights(str(path))
    except Exception as error:
        raise ValueError(f"{path} does not hold weights of the {key} backbone "
                         f"(save them with model.get_layer('backbone').save_weights(...)): "
                         f"{error}") from error
    return model, str(path)


def is_pretrained(weights_source: str) -> bool:
    """Whether a ``weights_source`` names trained weights (ImageNet or a file)."""
    return not str(weights_source).startswith("random")


def freeze_batch_norm(model: keras.Model) -> None:
    """Freeze every BatchNormalization layer of ``model``: its statistics and its scale and
    offset stay as they are, and it normalises in inference mode also during training."""
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False


# --------------------------------------------------------------------------------------------
# Blocks: surgery and unfreezing on block boundaries


def cut(backbone: keras.Model, name: str, remove_blocks: int) -> keras.Model:
    """``backbone`` (the keras.applications model ``name``) without its top ``remove_blocks``
    blocks: a model named "backbone" from the same input to the end of the block below them
    (its layers are the very same objects, so loaded weights are kept). For DenseNet121 the
    cut falls on the transition block before each dense block removed."""
    stages = stage_ends(backbone, name)
    if not isinstance(remove_blocks, int) or not 0 <= remove_blocks < len(stages):
        raise ValueError(f"remove_blocks of {name} must be an integer from 0 to "
                         f"{len(stages) - 1} (it has {len(stages)} blocks), not {remove_blocks!r}")
    if remove_blocks == 0:
        return backbone
    end = backbone.get_layer(stages[-1 - remove_blocks]).output
    return keras.Model(backbone.input, end, name="backbone")


def stage_ends(backbone: keras.Model, name: str) -> list[str]:
    """The names of the layers of ``backbone`` (the keras.applications model ``name``, or a cut
    of it) that end each of its blocks, bottom to top. Unnamed layers get a number per Python
    session from Keras ("add_7"), so Xception's residual additions are found by their type."""
    names = []
    for stage in backbone_spec(name).stages:
        if stage == ADDITIONS:
            names += [layer.name for layer in backbone.layers
                      if isinstance(layer, layers.Add)]
        elif stage in {layer.name for layer in backbone.layers}:
            names.append(stage)
    return names


def block_boundaries(backbone: keras.Model, name: str) -> dict[int, int]:
    """How many top layers of ``backbone`` to unfreeze to train its top k blocks, for every k
    from 0 to all of its blocks (blocks a cut removed are not counted)."""
    names = [layer.name for layer in backbone.layers]
    present = stage_ends(backbone, name)
    top = len(names) - 1
    counts = {k: top - names.index(present[-1 - k]) for k in range(len(present))}
    counts[len(present)] = len(names)
    return counts


def _application(spec: Backbone, input_shape, weights) -> keras.Model:
    model = getattr(keras.applications, spec.constructor)(
        include_top=False, weights=weights, input_shape=tuple(input_shape))
    # Renamed afterwards: EfficientNet derives its weights file name from `name`.
    model.name = "backbone"
    return model


def _imagenet_backbone(key: str, spec: Backbone, input_shape, require_pretrained: bool):
    cache = keras_cache_dir()
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return _application(spec, input_shape, "imagenet"), "imagenet"
    except Exception as error:
        if not _is_download_failure(error):
            raise
        # get_file's message ends with the cause after " -- ", e.g. "[Errno 111] Connection refused"
        reason = " ".join(str(error).split()).rsplit(" -- ", 1)[-1][:160]
        what = (f"ImageNet weights for {key} are not available: {spec.weights_file} is not in "
                f"{cache} and could not be downloaded ({reason})")
        how = (f"run `make weights` on a machine with network, or copy the file named "
               f"{spec.weights_file} into {cache}/")
        if require_pretrained:
            raise WeightsUnavailableError(f"{what}; pretrained weights are required "
                                          f"(require_pretrained=True): {how}.") from error
        print(f"{what}, so training continues from random initialisation; to get them, {how}.")
        return _application(spec, input_shape, None), "random (imagenet unavailable)"


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _is_download_failure(error: Exception) -> bool:
    # keras.utils.get_file turns URLError/HTTPError into Exception("URL fetch failure ...");
    # DNS failures, refused connections and timeouts arrive as OSError.
    return isinstance(error, OSError) or "URL fetch failure" in str(error)


def fetch_imagenet_weights(names=("vgg19", "inceptionv3")) -> dict[str, Path]:
    """Put the ImageNet weights of the backbones ``names`` into the Keras cache (``make
    weights``); returns name -> file. Raises :class:`WeightsUnavailableError` when one cannot be
    fetched."""
    specs = {str(name).lower(): backbone_spec(name) for name in names}
    found, failed = {}, []
    for name, spec in specs.items():
        target = keras_cache_dir() / spec.weights_file
        state = "already cached" if target.is_file() else "downloaded"
        try:
            build_backbone(name, (spec.min_size, spec.min_size, 3), weights="imagenet",
                           require_pretrained=True)
        except WeightsUnavailableError as error:
            print(f"{name}: FAILED: {error}", file=sys.stderr)
            failed.append(name)
            continue
        print(f"{name}: {state} {target}")
        found[name] = target
    if failed:
        raise WeightsUnavailableError(f"could not fetch the ImageNet weights of "
                                      f"{', '.join(failed)} (see above)")
    return found


def calibrate_batch_norm(model: keras.Model, dataset, batches: int = 16) -> int:
    """Estimate the moving mean and variance of every BatchNormalization layer of a transfer
    model's backbone from up to ``batches`` batches of ``dataset`` (a running average over the
    batches, nothing else changes). Returns the number of layers calibrated.

    A randomly initialised backbone (ImageNet weights unavailable) has moving statistics of
    0 and 1, so in inference mode, as when it is frozen, a deep one such as InceptionV3 yields
    degenerate features; calibrated statistics make its random features usable.
    """
    backbone, preprocess = model.get_layer("backbone"), model.get_layer("preprocess")
    norms = [layer for layer in backbone._flatten_layers()
             if isinstance(layer, layers.BatchNormalization)]
    if not norms:
        return 0
    saved = [(layer, layer.momentum, layer.trainable) for layer in norms]
    try:
        for layer in norms:
            layer.trainable = True
        for k, (images, _) in enumerate(dataset.take(batches)):
            for layer in norms:  # momentum k/(k+1): the mean over the batches seen so far
                layer.momentum = k / (k + 1)
            backbone(preprocess(images), training=True)
    finally:
        for layer, momentum, trainable in saved:
            layer.momentum, layer.trainable = momentum, trainable
    return len(norms)


# --------------------------------------------------------------------------------------------
# Command line: make weights


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.models.backbones",
                                     description="Fetch ImageNet weights into the Keras cache.")
    sub = parser.add_subparsers(dest="command", required=True)
    weights = sub.add_parser("weights", help="download ImageNet weights of the named backbones")
    weights.add_argument("names", nargs="*", default=["vgg19", "inceptionv3"],
                         help=f"backbones ({', '.join(BACKBONES)}); default: vgg19 inceptionv3")
    args = parser.parse_args(argv)
    try:
        fetch_imagenet_weights(args.names)
    except (WeightsUnavailableError, ValueError) as error:
        print(f"make weights failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
