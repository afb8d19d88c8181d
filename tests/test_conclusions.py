"""Conclusions computed from the results: comparisons on the same images with McNemar, the
random-weights warning first, and the settings that shaped a model recorded."""

from __future__ import annotations

import pandas as pd
import pytest

from shared.evaluation import conclusions
from shared.models import networks
from shared.training import recipes
from shared.training.fitting import record_recipe

pytestmark = pytest.mark.trains  # not in `make check`


def predictions(right: list[bool], order=None) -> pd.DataFrame:
    """predictions.csv rows for test images i0, i1, ... labelled "a"; right or not as given."""
    rows = [("test", f"i{i}.png", "a", "a" if ok else "b") for i, ok in enumerate(right)]
    rows.append(("val", "v.png", "a", "a"))
    frame = pd.DataFrame(rows, columns=["split", "path", "label", "predicted"])
    return frame if order is None else frame.iloc[order].reset_index(drop=True)


def test_compare_pairs_images_by_path_and_counts_the_discordant_ones():
    """Catches a comparison that pairs rows by position when the two files differ in order."""
    candidate = predictions([True] * 12 + [False] * 2)
    reference = predictions([False] * 10 + [True] * 4, order=list(range(15))[::-1])
    result = conclusions.compare(candidate, reference)
    assert (result["images"], result["only_candidate"], result["only_reference"]) == (14, 10, 2)
    assert result["accuracy"] == pytest.approx(12 / 14)
    assert result["reference_accuracy"] == pytest.approx(4 / 14)
    # two-sided exact McNemar: 2 * P(X <= 2), X ~ Binomial(12, 0.5)
    assert result["p_value"] == pytest.approx(2 * (1 + 12 + 66) / 2 ** 12)
    sentence = conclusions.comparison_sentence(result, "the new model", "the old one")
    assert "the new model (85.7%) is 57.1 points more accurate than the old one (28.6%)" \
        in sentence
    assert "beyond chance (p = 0.0386 < 0.05)" in sentence and "McNemar" in sentence


def test_compare_refuses_two_different_sets_of_images():
    with pytest.raises(ValueError, match="not scored on the same test images"):
        conclusions.compare(predictions([True] * 3), predictions([True] * 4))


def test_a_missing_or_incomparable_reference_gets_a_sentence_not_an_error():
    sentences = conclusions.comparisons(predictions([True, True]), "A", {
        "the phase 1 model": "fine-tuning did not run",
        "another run's model": predictions([True, True, True]),
        "B": predictions([True, False])})
    assert sentences[0] == "No comparison with the phase 1 model: fine-tuning did not run."
    assert sentences[1].startswith("No comparison with another run's model: the two models "
                                   "were not scored on the same test images")
    assert sentences[2].startswith("On the same 2 images of the test split, A (100.0%) is "
                                   "50.0 points more accurate than B (50.0%): 1 image only A")


def test_a_tie_is_not_called_a_difference():
    result = conclusions.compare(predictions([True, False]), predictions([False, True]))
    sentence = conclusions.comparison_sentence(result, "A", "B")
    assert "A (50.0%) is as accurate as B (50.0%)" in sentence
    assert "not a difference beyond chance (p = 1)" in sentence


def test_the_conclusion_opens_with_random_weights_and_names_missing_references():
    metrics = {"experiment": "vgg19", "title": "VGG19 model", "accuracy": 0.5, "macro_f1": 0.4,
               "weights_source": "random (imagenet unavailable)"}
    text = conclusions.conclusion(metrics, conclusions.comparisons(
        predictions([True]), "the VGG19 model", {"the baseline": None}))
    first, second, third = text.split("\n\n")
    assert first.startswith("ImageNet weights could not be loaded on this machine")
    assert "says nothing about ImageNet transfer" in first
    assert second.startswith("The VGG19 model reaches 50.0% test accuracy")
    assert third == "No comparison with the baseline: it has no results."
    pretrained = conclusions.conclusion(metrics | {"weights_source": "imagenet"})
    assert pretrained.startswith("The VGG19 model reaches")


def test_models_carry_the_settings_they_were_built_with():
    model = networks.build_baseline((16, 16, 3), 3, blocks=1, l2=1e-4)
    assert model.build_settings["blocks"] == 1 and model.build_settings["l2"] == 1e-4
    assert model.build_settings["dense"] == (128,)          # a default, recorded too
    head = networks.build_head("quasi_svm", 8, 3, output_dim=64)
    assert head.build_settings == {"kind": "quasi_svm", "output_dim": 64, "kernel": "gaussian",
                                   "scale": None, "trainable_scale": False, "dropout": 0.0,
                                   "l2": 1e-4, "normalize": True}


def test_training_records_each_phase_recipe_on_the_model(tmp_path):
    model = networks.build_baseline((8, 8, 3), 2, blocks=1, dense=())
    recipe = recipes.Recipe(optimizer="sgd", learning_rate=0.01, epochs=0)
    record_recipe(model, "warmup", recipe, class_weight={0: 1.0, 1: 2.0})
    record_recipe(model, "main", recipes.Recipe(epochs=0))
    assert list(model.recipes) == ["warmup", "main"]
    assert model.recipes["warmup"]["optimizer"] == "sgd"
    assert model.recipes["warmup"]["class_weight"] is True
    assert model.recipes["main"]["class_weight"] is False


def test_a_replaced_head_keeps_the_record_of_earlier_phases():
    model = networks.build_transfer("vgg16", (32, 32, 3), 3, weights=None)
    model.phase_summary = {"head": {"epochs": 2, "seconds": 5.0}}
    record_recipe(model, "head", recipes.Recipe(epochs=2))
    svm = networks.replace_head(model, networks.build_head("quasi_svm", 512, 3, output_dim=16))
    assert svm.phase_summary == model.phase_summary and list(svm.recipes) == ["head"]
    assert svm.build_settings["head"]["kind"] == "quasi_svm"
