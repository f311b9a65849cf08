"""Files a user points us at fail clearly: each error names the file and what is wrong."""
from __future__ import annotations

import jax
import pytest

from jaxstep import models
from jaxstep.config_lib.sections import base_config
from jaxstep.data import sources, tokenizer as tokenizer_lib
from jaxstep.data.problem import DataError
from jaxstep.models import hf


@pytest.fixture()
def hf_folder(tmp_path):
    """A random tiny HF folder (config.json, model.safetensors, tokenizer files)."""
    tok = tokenizer_lib.train_tokenizer(["1 + 2 = 3\n#### 3", "Tom has 4 apples."], vocab_size=64)
    config = models.tiny(len(tok), hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                         intermediate_size=48)
    folder = tmp_path / "model"
    hf.save(folder, config, models.init_params(config, jax.random.key(0)), tokenizer=tok)
    hf.load(folder)  # the intact folder loads
    tokenizer_lib.load_tokenizer_folder(str(folder))
    return folder


def test_truncated_safetensors_names_the_file(hf_folder):
    file = hf_folder / hf.SAFE_SINGLE
    for keep in (file.stat().st_size // 2, 6):  # cut inside the tensors; inside the header
        file.write_bytes(file.read_bytes()[:keep])
        with pytest.raises(ValueError, match="not a readable safetensors file") as err:
            hf.load(hf_folder)
        assert str(file) in str(err.value)


def test_corrupt_config_json_names_the_file(hf_folder):
    config_file = hf_folder / "config.json"
    text = config_file.read_text()
    config_file.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="not a readable config.json file") as err:
        hf.load(hf_folder)
    assert str(config_file) in str(err.value)
    config_file.write_text('{"vocab_size": 64}')
    with pytest.raises(models.UnsupportedModelError, match="model_type") as err:
        hf.load(hf_folder)
    assert str(config_file) in str(err.value)


def test_corrupt_tokenizer_json_names_the_file(hf_folder):
    file = hf_folder / tokenizer_lib.TOKENIZER_FILE
    file.write_text(file.read_text()[:100])
    for load in (tokenizer_lib.load_tokenizer_folder, tokenizer_lib.load_tokenizer):
        with pytest.raises(ValueError, match="not a readable tokenizer") as err:
            load(str(hf_folder))
        assert str(file) in str(err.value)
    with pytest.raises(ValueError, match="not a readable tokenizer") as err:
        tokenizer_lib.load_tokenizer(str(file))  # the file itself
    assert str(file) in str(err.value)


def test_empty_data_file_is_a_data_error(tmp_path):
    config = base_config("bad_files", "sft")
    empty = tmp_path / "train.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no problems") as err:
        sources.load_problems(config, str(empty), "train")
    assert str(empty) in str(err.value)
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    with pytest.raises(DataError, match="no problems"):  # one empty source of a mix too
        sources.load_problems(config, f"synthetic:0.5,{blank}:0.5", "train")
