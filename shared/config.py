"""Profiles and paths: the one place that holds the project's defaults.

A *profile* is a named set of sizes. ``smoke`` is for tests (a notebook runs in well under a
minute on a 2-core CPU), ``cpu`` gives a meaningful result on a laptop in minutes, ``gpu`` is the
full experiment. ``auto`` picks ``gpu`` where TensorFlow sees a GPU and ``cpu`` elsewhere.

:data:`DEFAULTS` states every setting once: a ``common`` part (the split and the batch size,
shared by every notebook of a run) and one part per experiment. A profile in :data:`PROFILES`
lists only the values that differ from them. :func:`settings` merges the defaults, the profile
and a notebook's explicit parameters, in that order, so ``settings("cpu", "baseline",
epochs=3)`` is the cpu profile with three epochs.

Keys of ``common``:
    seed            seed of the split, the shuffles and the weights
    val_fraction    share of the (sub-sampled) images that go to validation
    test_fraction   share that goes to test, when the dataset has no test set of its own
    per_class       at most this many images per class before splitting (None: all)
    test_per_class  at most this many images per class of a dataset's own test set (None: all)
    batch_size      images per batch (None: derived at the experiment's start from the data:
                    shared.training.experiment.derive_settings, from the image size)
    cache           where decoded images are cached: "memory", "disk" (under the run
                    directory) or "auto" (memory unless the decoded images exceed 2 GiB)
    mixed_precision True: mixed_float16 where TensorFlow sees a GPU (float32 outputs, a
                    loss scale); on in the gpu profile
    jit_compile     True: models are compiled with XLA (``model.compile(jit_compile=True)``)
    deterministic   True: TensorFlow's op determinism on (seeded random ops, deterministic
                    kernels and tf.data order), so that on a CPU a rerun gives byte-identical
                    predictions; off in the gpu profile, where it costs speed, and wherever
                    jit_compile is True (Keras compiles without XLA under op determinism)
    probe_per_class, probe_epochs   the augmentation probe of ``augment="auto"``
                    (shared.training.probe): training images per class and epochs of each
                    candidate policy
    exclude         a CSV of image paths (a ``path`` column, relative to the dataset folder,
                    e.g. a run's data_quality/label_issues.csv) that the run's split leaves out
                    of train, val and test (split.csv lists them as "excluded"; dataset.json
                    and metrics.json record the file and the counts); None: nothing. A relative
                    file name is read from the current folder, else from the repository's root
    keep_checkpoints  True: a finished experiment keeps its checkpoints/ and backup/ (by
                    default they are deleted once its results are written, leaving model.keras)

Keys of an experiment:
    image_size      side of the square input, in pixels (None: derived at the experiment's
                    start from the data: shared.training.experiment.derive_settings)
    max_image_size  the largest side an image size taken from the data may have
    train_per_class at most this many training images per class for this experiment (None: all)
    augment         augmentation policy, see shared.data.augment (e.g. "basic+cutmix"); "auto"
                    (the baseline CNN's default): chosen by a short probe on the run's
                    training and validation images (shared.training.probe), once per run
    epochs          epochs of training (phase 1 for transfer models; None: derived at the
                    experiment's start from the data: shared.training.experiment.derive_settings,
                    from the number of training images, or for the baseline with
                    ``train_minutes``, from the time of its first epoch: shared.training.budget)
    train_minutes   the baseline's training budget in minutes, used where epochs is None
    learning_rate   learning rate of phase 1
    fine_tune_epochs, fine_tune_lr, unfreeze   phase 2 of transfer learning: epochs, learning
                    rate and the number of top backbone layers unfrozen ("all" for every layer)
    svm_epochs      epochs of the quasi-SVM head on the frozen, fine-tuned backbone
    class_weight    True: weight the loss by scikit-learn's 'balanced' class weights
    oversample      True: oversample minority classes to the size of the largest
    tta             views of test-time augmentation scored on the test split beside the model
                    alone (identity, flip, shifts; see shared.evaluation.tta); 0 or 1: off
    tta_per_class   at most this many test images per class for it (None: every test image)
    dog_train_per_class, dog_epochs   the baseline's with/without comparison of the
                    difference-of-Gaussians channel: training images per class (None: all)
                    and epochs of both of its arms

Keys of a study (``backbones``: 05, ``fine_tuning``: 06; see shared.studies.study), besides the
experiment keys above, which every trial uses:
    score_per_class val and test images per class each trial is scored on (None: all; the best
                    trial is scored again on all of them)
    trials          names of the trials to run (None: every trial of the study)
    budget_minutes  trials that would start after the study has spent this long are skipped
    backbone        the backbone of the fine-tuning depth study
    tuner, max_trials, hyperband_factor   the search's (07, shared.studies.search): "hyperband" or
                    "bayesian", at most this many trials, Hyperband's reduction factor; its
                    ``epochs`` are the most one trial trains, its budget stops new trials

This module only states defaults (it reads no file). Settings left at None are derived at the
experiment's start from the data, in one place: :func:`shared.training.experiment.derive_settings`
(with its formulas, :func:`shared.training.experiment.batch_size_for` and
:func:`shared.training.experiment.epochs_for`): ``image_size`` is the median short side of the
training images, at most ``max_image_size`` and at least the backbone's smallest input;
``batch_size`` follows from it; ``epochs`` from the number of training images; ``cache`` "auto"
becomes "memory" or "disk" by the size of the decoded images. Fashion-MNIST stays at 28 px.
"""

from __future__ import annotations

import copy
import datetime as _dt
import os
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
REPORTS_DIR = REPO_ROOT / "reports"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"

# Environment variables that a notebook's parameters fall back to when left at None; the test
# suite sets them to run every notebook on the smoke profile into one temporary run directory.
ENV_PROFILE = "SHARED_PROFILE"
ENV_DATA = "SHARED_DATA"
ENV_RUN_DIR = "SHARED_RUN_DIR"
# Set (to 1) by `make run NB=… FRESH=1`: training retrains the phases that finished earlier.
ENV_FRESH = "SHARED_FRESH"
ENV_SHRINK = "SHARED_SHRINK"   # "1": a profile's counts shrunk (SHRUNK), for tests

DEFAULT_DATASET = "fashion-mnist"
# An experiment folder's results (the contract of shared.results) and its training state
# (shared.training.fitting): what a fresh start sets aside in <experiment>/previous/.
RESULT_FILES = ("metrics.json", "predictions.csv", "history.csv", "model.keras")
TRAINING_STATE = ("checkpoints", "backup", "logs", "phases.json")
# The part of it only resuming needs: deleted when an experiment finishes (keep_checkpoints)
# and by `make prune-models`, which also deletes model.keras and leaves MODEL_FREED in its place.
CHECKPOINTS = ("checkpoints", "backup")
MODEL_FREED = "model_freed.json"
EXPERIMENTS = ("data", "baseline", "vgg19", "inceptionv3", "ensemble")
STUDIES = ("backbones", "fine_tuning", "search", "ablations", "cross_validation",
           "data_quality")
# how conclusions and leaderboards name each experiment
TITLES = {"baseline": "baseline CNN", "vgg19": "VGG19 model",
          "inceptionv3": "InceptionV3 model with the quasi-SVM head", "ensemble": "ensemble",
          "backbones": "best backbone of the backbones study",
          "fine_tuning": "best schedule of the fine-tuning depth study",
          "search": "best baseline CNN of the hyperparameter search",
          "ablations": "best setting of the ablations",
          "cross_validation": "cross-validated baseline CNN, retrained on train and val",
          "data_quality": "data quality audit"}

# Each setting's value where no profile says otherwise ("common": every notebook of a run).
DEFAULTS: dict[str, dict] = {
    "common": dict(seed=42, val_fraction=0.1, test_fraction=0.2, per_class=None,
                   test_per_class=None, batch_size=None, cache="auto", mixed_precision=False,
                   jit_compile=False, keep_checkpoints=False, train_seed=None,
                   deterministic=True, exclude=None, probe_per_class=60, probe_epochs=90),
    "data": dict(image_size=28),
    "baseline": dict(image_size=None, max_image_size=96, train_per_class=None, augment="auto",
                     epochs=None, train_minutes=None,
                     learning_rate=1e-3, class_weight=True, oversample=False, tta=4,
                     tta_per_class=None, dog_train_per_class=500, dog_epochs=3),
    "vgg19": dict(image_size=None, max_image_size=32, train_per_class=None, augment="none",
                  epochs=20,
                  learning_rate=1e-3, fine_tune_epochs=2, fine_tune_lr=1e-5, unfreeze=4,
                  class_weight=True, oversample=False, tta=4, tta_per_class=None),
    "inceptionv3": dict(image_size=None, max_image_size=75, train_per_class=None,
                        augment="none", epochs=20,
                        learning_rate=1e-3, fine_tune_epochs=1, fine_tune_lr=1e-5, unfreeze=15,
                        svm_epochs=20, class_weight=True, oversample=False, tta=4,
                        tta_per_class=None),
    "ensemble": dict(),
    # studies (shared.studies.study): each trial is trained on train_per_class images per class and
    # scored on score_per_class images per class of val and test; the best one again on all
    "backbones": dict(image_size=None, max_image_size=32, train_per_class=None, augment="none",
                      epochs=5, learning_rate=1e-3, fine_tune_epochs=2, fine_tune_lr=1e-5,
                      class_weight=True, oversample=False, score_per_class=None, trials=None,
                      budget_minutes=None),
    "fine_tuning": dict(backbone="vgg19", image_size=None, max_image_size=32,
                        train_per_class=None, augment="none",
                        epochs=5, learning_rate=1e-3, fine_tune_epochs=2, fine_tune_lr=1e-5,
                        class_weight=True, oversample=False, score_per_class=None, trials=None,
                        budget_minutes=None),
    # studies of the baseline CNN (shared.studies.baseline): its settings, then the study's own
    # tuner: "hyperband" or "bayesian"; epochs: the most one trial trains (Hyperband's
    # max_epochs); max_trials None: Hyperband's own count (Bayesian: 10)
    "search": dict(image_size=None, max_image_size=96, train_per_class=None, augment="auto",
                   epochs=None, learning_rate=1e-3, class_weight=True, oversample=False,
                   score_per_class=None, trials=None, budget_minutes=None, tuner="hyperband",
                   max_trials=None, hyperband_factor=3),
    # changes: "<setting>=<value>" each (None: every change, shared.studies.ablations), seeds: train
    # seeds 1 … seeds per change
    "ablations": dict(image_size=None, max_image_size=96, train_per_class=None, augment="auto",
                      epochs=None, learning_rate=1e-3, class_weight=True, oversample=False,
                      score_per_class=None, trials=None, budget_minutes=None, changes=None,
                      seeds=3),
    # k folds of at most pool_per_class train+val images per class; the setting: "auto" (the
    # run's search's best where there is one), "baseline" or "search"
    "cross_validation": dict(image_size=None, max_image_size=96, train_per_class=None,
                             augment="auto", epochs=None, learning_rate=1e-3, class_weight=True,
                             oversample=False, score_per_class=None, trials=None,
                             budget_minutes=None, folds=5, pool_per_class=None,
                             setting="auto"),
    # notebook 10 (shared.studies.data_quality): near-duplicates within hash_distance bits of
    # pHash whose thumbnails correlate at least min_similarity; out-of-fold probabilities from
    # k folds of the baseline CNN (fold_epochs each; 09's folds where they scored every train
    # and val image); cleanlab's label issues; then the baseline with and without the suspects
    # (clean_epochs each). fold_epochs and clean_epochs None: about images_seen images per
    # training, within 2 to 30 epochs
    "data_quality": dict(image_size=None, max_image_size=96, train_per_class=None,
                         augment="flip", learning_rate=1e-3, class_weight=True,
                         oversample=False, score_per_class=None, trials=None,
                         budget_minutes=None, tta=0, hash_distance=6, min_similarity=0.98,
                         folds=3, fold_epochs=None, clean_epochs=None, images_seen=60_000,
                         suspects_shown=24),
}

# A profile is sizes: only what differs from DEFAULTS.
PROFILES: dict[str, dict[str, dict]] = {
    "smoke": {
        "common": dict(val_fraction=0.15, per_class=30, test_per_class=10, batch_size=32,
                       cache="memory", probe_per_class=10, probe_epochs=1),
        # the tests give the policy (tests/test_probe.py runs the probe itself): a probe at every
        # experiment's start would add four trainings to each test on a folder of images
        "baseline": dict(max_image_size=32, epochs=1, dog_train_per_class=None, dog_epochs=1,
                         augment="flip"),
        # TTA on 5 test images per class: a view of a backbone is a pass over it
        "vgg19": dict(epochs=1, fine_tune_epochs=1, tta_per_class=5),
        # no fine-tuning: tracing InceptionV3's training step costs half a minute, and 02
        # already runs the same fine-tuning code in the smoke profile
        "inceptionv3": dict(train_per_class=10, epochs=1, fine_tune_epochs=0, svm_epochs=1,
                            tta_per_class=5),
        # two tiny trials per study, one of them the cut DenseNet121 / the three-stage schedule
        # heads only: tracing the training step of a whole DenseNet takes minutes on 2 cores
        "backbones": dict(train_per_class=10, epochs=1, fine_tune_epochs=0,
                          trials=["vgg16", "densenet121-cut1"]),
        "fine_tuning": dict(train_per_class=10, epochs=1, fine_tune_epochs=1,
                            trials=["top-1", "three-stage"]),
        "search": dict(max_image_size=16, epochs=2, max_trials=3, augment="flip"),
        "ablations": dict(max_image_size=32, epochs=1, seeds=2, augment="flip",
                          changes=["augment=mixup", "train_per_class=10"]),
        "cross_validation": dict(max_image_size=32, epochs=1, folds=2, pool_per_class=20,
                                 augment="flip"),
        "data_quality": dict(max_image_size=32, fold_epochs=1, folds=2, clean_epochs=1,
                             suspects_shown=8),
    },
    "cpu": {
        # the whole of a given test set (Fashion-MNIST's 10,000), so figures compare with
        # published ones
        "common": dict(val_fraction=0.05),
        # the epochs that fit in 8 minutes of training (shared.training.budget)
        "baseline": dict(learning_rate=2e-3, train_minutes=8),
        # TTA on 1,000 test images: each view costs a pass of the backbone
        "vgg19": dict(train_per_class=200, tta_per_class=100),
        "inceptionv3": dict(train_per_class=100, tta_per_class=100),
        # the study budgets keep the whole cpu run-all near 30 minutes on 2 cores
        "backbones": dict(train_per_class=50, epochs=2, fine_tune_epochs=1, score_per_class=50,
                          budget_minutes=3),
        "fine_tuning": dict(train_per_class=50, epochs=2, fine_tune_epochs=1, score_per_class=50,
                            budget_minutes=3),
        # Hyperband over 9 epochs: 23 trials took 3.6 min once here; the budget cuts the last
        "search": dict(max_image_size=28, train_per_class=200, epochs=9, score_per_class=50,
                       budget_minutes=3),
        # 12 trials of about 20 s each on Fashion-MNIST (3.7 min for the notebook)
        "ablations": dict(learning_rate=2e-3, train_per_class=200, epochs=5, score_per_class=100,
                          seeds=2, budget_minutes=4,
                          changes=["augment=none", "augment=mixup", "train_per_class=50",
                                   "plain_epochs=2", "class_weight=off"]),
        "cross_validation": dict(learning_rate=2e-3, epochs=8, pool_per_class=500,
                                 budget_minutes=3),
        # every train and val image scored out of fold: 3 short trainings, then both arms,
        # at most 64 px (4.4 min on Fashion-MNIST, 6 on the leaf photos)
        "data_quality": dict(max_image_size=64, learning_rate=2e-3),
    },
    "gpu": {
        "common": dict(batch_size=64, mixed_precision=True, deterministic=False),
        "data": dict(image_size=96),
        "baseline": dict(max_image_size=224, epochs=40, dog_train_per_class=None,
                         dog_epochs=10),
        "vgg19": dict(image_size=224, augment="basic", fine_tune_epochs=20, unfreeze=14),
        "inceptionv3": dict(image_size=299, augment="basic", epochs=10, fine_tune_epochs=20,
                            unfreeze=60),
        "backbones": dict(max_image_size=224, epochs=10, fine_tune_epochs=10),
        "fine_tuning": dict(backbone="inceptionv3", max_image_size=299, epochs=10,
                            fine_tune_epochs=10),
        "search": dict(max_image_size=128, epochs=27, max_trials=60, budget_minutes=120),
        "ablations": dict(max_image_size=224, epochs=20),
        "cross_validation": dict(max_image_size=224, epochs=20),
        "data_quality": dict(max_image_size=224, augment="basic", folds=5,
                             images_seen=300_000),
    },
}
PROFILE_NAMES = (*PROFILES, "auto")

# With $SHARED_SHRINK=1, every profile keeps its image sizes, batch sizes, policies and code
# paths but trains and scores a handful of images for one epoch, one trial: how
# tests/test_gpu_profile.py runs the gpu profile end to end on a CPU.
SHRUNK = dict(per_class=6, test_per_class=1, train_per_class=None, epochs=1,
              fine_tune_epochs=1, svm_epochs=1, dog_epochs=1, dog_train_per_class=None,
              clean_epochs=1, fold_epochs=1, tta_per_class=1, score_per_class=None,
              budget_minutes=None, max_trials=1, seeds=1, folds=2, pool_per_class=None,
              probe_per_class=2, probe_epochs=1)
SHRUNK_BY_EXPERIMENT = {"backbones": dict(trials=["vgg16"]), "fine_tuning": dict(trials=["top-1"]),
                        "ablations": dict(changes=["augment=none"]),
                        "search": dict(epochs=2)}   # Hyperband needs two epochs to make a trial


def train_seed(cfg: dict) -> int:
    """The seed of a training's initialisation, shuffling and augmentation: ``train_seed``,
    else the run's ``seed`` (which also drew the split, so it cannot change within a run)."""
    return cfg["seed"] if cfg.get("train_seed") is None else int(cfg["train_seed"])


def gpu_available() -> bool:
    """Whether TensorFlow sees at least one GPU."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def resolve_profile(name: str | None = None, verbose: bool = True) -> str:
    """Return a concrete profile name: None reads $SHARED_PROFILE (default "auto"), and "auto"
    becomes "gpu" where TensorFlow sees a GPU, else "cpu" (printed)."""
    name = name or os.environ.get(ENV_PROFILE) or "auto"
    if name not in PROFILE_NAMES:
        raise ValueError(f"unknown profile {name!r}: choose one of {', '.join(PROFILE_NAMES)}")
    if name == "auto":
        name = "gpu" if gpu_available() else "cpu"
        if verbose:
            print(f"profile auto -> {name} ({'a GPU is' if name == 'gpu' else 'no GPU'} visible)")
    return name


def settings(profile: str | None, experiment: str, **overrides) -> dict:
    """The merged settings of ``experiment`` under ``profile``, with explicit values applied.

    Overrides whose value is None keep the profile's value, so a notebook can pass all of its
    parameters through. The result also holds ``profile`` (the concrete name) and ``experiment``.
    """
    if experiment not in (*EXPERIMENTS, *STUDIES):
        raise ValueError(f"unknown experiment {experiment!r}: "
                         f"choose one of {', '.join((*EXPERIMENTS, *STUDIES))}")
    name = resolve_profile(profile)
    profile_sizes = PROFILES[name]
    merged = copy.deepcopy(DEFAULTS["common"] | profile_sizes.get("common", {})
                           | DEFAULTS[experiment] | profile_sizes.get(experiment, {}))
    if os.environ.get(ENV_SHRINK) == "1":
        merged.update({k: v for k, v in SHRUNK.items() if k in merged}
                      | SHRUNK_BY_EXPERIMENT.get(experiment, {}))
    unknown = sorted(k for k in overrides if k not in merged)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)} for {experiment!r}: "
                         f"valid ones are {', '.join(sorted(merged))}")
    merged.update({k: v for k, v in overrides.items() if v is not None})
    merged.update(profile=name, experiment=experiment)
    return merged


def experiment(name: str, profile: str | None = None, dataset: str | None = None,
               run_dir: str | os.PathLike | None = None, **overrides) -> dict:
    """Everything a notebook needs to start: :func:`settings` plus ``dataset``, ``run_dir``
    and ``out_dir`` (``<run_dir>/<name>``, created), with the environment fallbacks applied,
    and ``fresh``: whether this experiment starts over ($SHARED_FRESH, which ``make run NB=…
    FRESH=1`` sets), decided here once; :func:`shared.training.experiment.start` acts on it."""
    cfg = settings(profile, name, **overrides)
    cfg["dataset"] = resolve_dataset(dataset)
    cfg["run_dir"] = resolve_run_dir(run_dir, cfg["profile"], cfg["dataset"])
    cfg["out_dir"] = cfg["run_dir"] / name
    cfg["out_dir"].mkdir(exist_ok=True)
    cfg["fresh"] = fresh_from_environment()
    if cfg.get("exclude"):
        cfg["exclude"] = str(resolve_file(cfg["exclude"]))
    return cfg


def resolve_file(name: str | os.PathLike) -> Path:
    """A file a setting names: as given where it exists (or is absolute), else under the
    repository's root (a notebook runs in notebooks/, ``make`` in the root)."""
    path = Path(name).expanduser()
    if path.is_absolute() or path.exists():
        return path.resolve()
    return (REPO_ROOT / path).resolve()


def resolve_dataset(dataset: str | os.PathLike | None = None) -> str:
    """None reads $SHARED_DATA (default "fashion-mnist")."""
    return str(dataset or os.environ.get(ENV_DATA) or DEFAULT_DATASET)


def slug(text: str) -> str:
    """A file-name-safe short form of a dataset spec or any label."""
    tail = Path(str(text).rstrip("/")).name or str(text)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", tail).strip("-") or "data"


def default_run_name(profile: str, dataset: str, when: _dt.datetime | None = None) -> str:
    """``<date>-<time>-<profile>-<dataset>``, the runner's default run name."""
    when = when or _dt.datetime.now()
    return f"{when:%Y%m%d-%H%M%S}-{profile}-{slug(dataset)}"


def resolve_run_dir(run_dir: str | os.PathLike | None, profile: str, dataset: str) -> Path:
    """The run directory of a notebook: the given one, else $SHARED_RUN_DIR, else
    ``reports/interactive-<profile>-<dataset>`` so that notebooks opened by hand one after
    another share one run. Created if missing."""
    chosen = run_dir or os.environ.get(ENV_RUN_DIR)
    path = Path(chosen) if chosen else REPORTS_DIR / f"interactive-{profile}-{slug(dataset)}"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def fresh_from_environment() -> bool:
    """Whether $SHARED_FRESH asks training to start over ("1", "true", "yes")."""
    return os.environ.get(ENV_FRESH, "").strip().lower() in ("1", "true", "yes")
