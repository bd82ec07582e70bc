"""The one dataclass-config loader (chameleon_lite.configs) and the one override syntax of every trainer."""

import pytest

from chameleon_lite.configs import config_from_dict, parse_overrides
from chameleon_lite.errors import ConfigError
from chameleon_lite.model.config import ModelConfig
from chameleon_lite.tokenizers.audio_train import AudioCodecTrainConfig
from chameleon_lite.tokenizers.image import ImageVQConfig
from chameleon_lite.tokenizers.image_train import ImageVQTrainConfig
from chameleon_lite.train.config import PretrainConfig


@pytest.mark.parametrize("cls", [PretrainConfig, ImageVQTrainConfig, AudioCodecTrainConfig])
def test_every_training_config_round_trips_through_the_loader(cls):
    cfg = cls()
    assert cls.from_dict(cfg.to_dict()) == cfg == config_from_dict(cls, cfg.to_dict())


def test_the_loader_names_the_source_and_the_problem():
    with pytest.raises(ConfigError, match=r"^f.json: unknown image tokenizer training option key\(s\) stepz; known: "):
        ImageVQTrainConfig.from_dict({"stepz": 3}, source="f.json")
    with pytest.raises(ConfigError, match=r"^f.json: steps must be >= 1"):
        ImageVQTrainConfig.from_dict({"steps": 0}, source="f.json")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        config_from_dict(ImageVQConfig, [1, 2], source="f.json")


def test_overrides_read_the_same_for_every_trainer():
    assert parse_overrides(["--steps=7", "--min-lr-ratio=0", "--model.codebook_dim=8"], ImageVQTrainConfig,
                           {"model": ImageVQConfig}) == {"steps": 7, "min_lr_ratio": 0.0, "model": {"codebook_dim": 8}}  # fmt: skip
    assert parse_overrides(["--model.dim=64"], PretrainConfig, {"model": ModelConfig}) == {"model": {"dim": 64}}
    with pytest.raises(ConfigError, match="unknown model field"):
        parse_overrides(["--model.nope=1"], ImageVQTrainConfig, {"model": ImageVQConfig})
    with pytest.raises(ConfigError, match="must look like --key=value"):
        parse_overrides(["--steps", "7"], ImageVQTrainConfig)


def test_tokenizer_commands_take_key_value_and_model_key_value(tmp_path, capsys):
    from chameleon_lite.cli import build_parser, main
    from chameleon_lite.train.commands import _overrides

    argv = ["tokenizer", "train-image", "--manifest", "m", "--out", "o", "--steps=9", "--warmup=3"]
    args = build_parser().parse_args([*argv, "--model.codebook_dim=8"])
    assert args.steps == 9 and _overrides(args, ImageVQTrainConfig, ImageVQConfig) == (
        {"warmup": 3},
        {"codebook_dim": 8},
    )
    args = build_parser().parse_args(
        ["tokenizer", "train-audio", "--manifest", "m", "--out", "o", "--spectral-ffts=[512]"]
    )
    options, _ = _overrides(args, AudioCodecTrainConfig, ImageVQConfig)
    assert AudioCodecTrainConfig.from_dict(options).spectral_ffts == (512,)
    for bad, message in (("--model.codebook_dim=x", "not a valid value"), ("--warmupp=1", "unknown training option")):
        assert main([*argv, bad]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
