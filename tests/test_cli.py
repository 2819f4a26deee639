"""The entry scripts' flags map 1:1 onto the config dataclasses, with DINO's and the seed's names."""

import argparse
import dataclasses

import pytest

from geodino.cli import add_dataclass_arguments, bool_flag, dataclass_from_args
from geodino.dino.config import PretrainConfig
from geodino.transfer.linear_probe import LinearProbeConfig


def parse(cls, argv):
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, cls)
    return dataclass_from_args(cls, parser.parse_args(argv))


def test_every_config_field_is_a_flag_with_the_same_default():
    assert parse(PretrainConfig, []) == PretrainConfig()
    assert parse(LinearProbeConfig, []) == LinearProbeConfig()


def test_dino_and_sagemaker_hyperparameters_parse_unchanged():
    # SageMaker passes every hyperparameter as "--name value", booleans as strings.
    config = parse(PretrainConfig, [
        "--arch", "vit_small", "--patch_size", "8", "--metadata_dir", "/opt/ml/input/data/metadata",
        "--data_dir", "/opt/ml/input/data/train", "--output_dir", "/opt/ml/model", "--checkpoint_dir",
        "/opt/ml/checkpoints", "--epochs", "100", "--saveckp_freq", "10", "--norm_last_layer", "False",
        "--global_crops_scale", "0.3", "1.0", "--use_gpu", "--momentum_teacher", "0.9995"])
    assert config.arch == "vit_small" and config.patch_size == 8 and config.epochs == 100
    assert config.norm_last_layer is False and config.use_gpu is True
    assert config.global_crops_scale == [0.3, 1.0] and config.momentum_teacher == 0.9995
    assert config.resolved_storage() == "/opt/ml/checkpoints"  # SageMaker syncs this folder to S3


def test_bool_flag_rejects_anything_else():
    assert bool_flag("true") and not bool_flag("0")
    with pytest.raises(argparse.ArgumentTypeError):
        bool_flag("maybe")


def test_names_follow_main_dino():
    names = {field.name for field in dataclasses.fields(PretrainConfig)}
    dino = {"arch", "patch_size", "out_dim", "norm_last_layer", "momentum_teacher", "teacher_temp",
            "warmup_teacher_temp", "warmup_teacher_temp_epochs", "batch_size_per_gpu", "epochs", "lr",
            "warmup_epochs", "min_lr", "weight_decay", "weight_decay_end", "clip_grad", "freeze_last_layer",
            "global_crops_scale", "local_crops_number", "local_crops_scale", "saveckp_freq", "output_dir", "seed",
            "drop_path_rate", "metadata_dir", "data_dir", "checkpoint_dir"}
    assert dino <= names
