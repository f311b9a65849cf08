"""Config fields of the DeBERTa reward models: rm.backbone, rm.block_causal, the paper presets."""
from __future__ import annotations

import importlib.util
import pathlib

import pytest

from jaxstep import config_lib

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _get_config(name: str, preset: str = ""):
    spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


@pytest.mark.parametrize("name", ["train_prm", "train_orm"])
def test_paper_presets_use_deberta_v3_large_and_cpu_defaults_stay_decoders(name):
    paper = _get_config(name, "paper")
    assert paper.rm.backbone == "deberta" and paper.rm.init_from == "microsoft/deberta-v3-large"
    assert paper.rm.block_causal and paper.rm.steps == 4000  # the rest of the paper preset kept
    default = _get_config(name)
    assert default.rm.backbone == "decoder" and default.rm.init_from == ""


def test_validation_names_the_deberta_fields():
    c = _get_config("train_prm")
    c.rm.backbone = "bert"
    with pytest.raises(ValueError, match="rm.backbone"):
        config_lib.validate(c)
    c.rm.backbone = "deberta"
    with pytest.raises(ValueError, match="rm.init_from"):
        config_lib.validate(c)
    c.rm.init_from = "some/folder"
    c.rm.likelihood_feature = True
    with pytest.raises(ValueError, match="rm.likelihood_feature"):
        config_lib.validate(c)
    c.rm.likelihood_feature = False
    c.rm.lm_loss_weight = 0.0
    config_lib.validate(c)
