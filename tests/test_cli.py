"""The entry scripts' flags map 1:1 onto the config dataclasses, with DINO's and the seed's names."""

import argparse
import dataclasses
import json
import os
import shlex
import shutil

import pytest

from geodino.cli import add_dataclass_arguments, bool_flag, dataclass_from_args
from geodino.dino.config import PretrainConfig
from geodino.transfer.linear_probe import LinearProbeConfig


def parse(cls, argv):
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, cls)
    return dataclass_from_args(cls, parser.parse_args(argv))


def test_every_config_field_is_a_flag_with_the_same_default():
    from geodino.archive.config import PrepareConfig
    from geodino.data.config import StreamConfig
    from geodino.transfer.visualize import VisualizeConfig

    for cls in (PretrainConfig, LinearProbeConfig, StreamConfig, VisualizeConfig):
        assert parse(cls, []) == cls(), cls.__name__
    # prepare's ARCHIVE is positional; its bool flags alone mean true, as the seed's store_true flags did
    parser = argparse.ArgumentParser()
    parser.add_argument("archive")
    add_dataclass_arguments(parser, PrepareConfig)
    assert dataclass_from_args(PrepareConfig, parser.parse_args(["x.csv"])) == PrepareConfig(archive="x.csv")
    typed = dataclass_from_args(PrepareConfig, parser.parse_args(["x.csv", "--strict", "--splits-dir", "lists"]))
    assert typed.strict is True and typed.splits_dir == "lists"


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


def test_use_gpu_is_auto_unless_typed():
    """auto (None) by default, decided by the launcher (Ray: the cluster's GPUs; torchrun: this machine's);
    true where there is no CUDA is refused (a case of the bad-value test below), never run on the CPU."""
    import torch

    from geodino.launch.torchrun import with_local_gpu

    assert parse(PretrainConfig, []).use_gpu is None and parse(PretrainConfig, ["--use_gpu", "auto"]).use_gpu is None
    assert parse(PretrainConfig, ["--use_gpu"]).use_gpu is True
    assert parse(PretrainConfig, ["--use_gpu", "false"]).use_gpu is False
    with pytest.raises(SystemExit):
        parse(PretrainConfig, ["--use_gpu", "maybe"])
    assert with_local_gpu(PretrainConfig()).use_gpu is torch.cuda.is_available()


def test_names_follow_main_dino():
    names = {field.name for field in dataclasses.fields(PretrainConfig)}
    dino = {"arch", "patch_size", "out_dim", "norm_last_layer", "momentum_teacher", "teacher_temp",
            "warmup_teacher_temp", "warmup_teacher_temp_epochs", "batch_size_per_gpu", "epochs", "lr",
            "warmup_epochs", "min_lr", "weight_decay", "weight_decay_end", "clip_grad", "freeze_last_layer",
            "global_crops_scale", "local_crops_number", "local_crops_scale", "saveckp_freq", "output_dir", "seed",
            "drop_path_rate", "metadata_dir", "data_dir", "checkpoint_dir"}
    assert dino <= names


def pretrain_script():
    from conftest import REPO, load_module

    return load_module(REPO / "experiments" / "pretrain.py", "pretrain_script")


def test_typed_flags_win_over_presets_even_when_they_equal_the_default():
    from geodino.dino.presets import PRESETS

    script = pretrain_script()
    demo = script.config_from_argv([])  # no --metadata_dir: the demo preset
    assert demo.preset == "demo" and demo.epochs == PRESETS["demo"]["epochs"] != PretrainConfig().epochs
    typed = script.config_from_argv(["--epochs", "100", "--arch", "vit_small"])  # 100 is also the default
    assert typed.epochs == 100 and typed.arch == "vit_small" and typed.out_dim == PRESETS["demo"]["out_dim"]
    small = script.config_from_argv(["--preset", "small_cpu", "--metadata_dir", "m.parquet", "--lr", "0.0005"])
    assert small.lr == 0.0005 and small.patch_size == PRESETS["small_cpu"]["patch_size"]
    plain = script.config_from_argv(["--metadata_dir", "m.parquet"])  # no preset: DINO's defaults
    assert plain == PretrainConfig(metadata_dir="m.parquet")


def test_an_unknown_preset_is_named():
    with pytest.raises(ValueError, match="--preset must be one of bigearthnet120, demo, seed, small_cpu, not 'fast'"):
        pretrain_script().config_from_argv(["--preset", "fast"])


def test_printed_script_paths_are_relative_inside_the_checkout_and_absolute_outside(tmp_path, monkeypatch):
    from conftest import REPO, load_module

    script = pretrain_script()
    monkeypatch.chdir(REPO)
    assert script.script_path("linear_probe.py") == os.path.join("experiments", "linear_probe.py")
    monkeypatch.chdir(tmp_path)
    assert script.script_path("linear_probe.py") == str(REPO / "experiments" / "linear_probe.py")
    copy = tmp_path / "..x" / "experiments"  # a checkout in a folder whose name starts with "..": still inside
    copy.mkdir(parents=True)
    shutil.copy(REPO / "experiments" / "pretrain.py", copy)
    relocated = load_module(copy / "pretrain.py", "pretrain_in_dotdot_folder")
    assert relocated.script_path("linear_probe.py") == os.path.join("..x", "experiments", "linear_probe.py")


def test_the_knn_verdict_claims_only_a_difference_beyond_the_margin():
    verdict = pretrain_script().knn_verdict
    assert verdict(0.801, 0.774) == "ahead of random init"
    assert verdict(0.775, 0.774) == verdict(0.770, 0.774) == "level with random init (within 0.01 AP, one run)"
    assert verdict(0.760, 0.774) == "BEHIND random init"


def test_a_submitted_job_prints_a_job_next_and_warns_of_outputs_in_its_working_dir_copy(tmp_path, monkeypatch,
                                                                                     capsys):
    """The job configuration below is what Ray's job supervisor hands a driver (RAY_JOB_CONFIG_JSON_ENV_VAR); the
    driver runs in Ray's copy of --working-dir. tests/test_cluster.py runs the whole job on a real head."""
    from geodino.ray_cluster import SubmittedJob, job_runtime_env, submitted_job

    script = pretrain_script()
    copy = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert submitted_job() is None  # a driver typed by hand
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(
        {"runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip"}, "metadata": {"job_submission_id": "raysubmit_7"}}))
    job = submitted_job()
    assert job == SubmittedJob("raysubmit_7", str(copy))
    assert job.holds("runs") and job.holds(str(copy / "..runs")) and job.holds(str(copy))
    assert not job.holds(str(copy.parent)) and not job.holds(f"{copy}1/runs")
    # Ray Data's log level joins the job's runtime env, unless the driver already has one (Ray sets the job's own
    # --runtime-env variables, and the environment of `ray start`, in the driver's environment)
    monkeypatch.delenv("RAY_DATA_LOG_LEVEL", raising=False)
    assert job_runtime_env("ERROR") == {"env_vars": {"RAY_DATA_LOG_LEVEL": "ERROR"}}
    monkeypatch.setenv("RAY_DATA_LOG_LEVEL", "INFO")
    assert job_runtime_env("ERROR") is None
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    assert job_runtime_env("ERROR") is None  # not a submitted job: nothing added
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(
        {"runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip"}, "metadata": {"job_submission_id": "raysubmit_7"}}))

    def warning(config, submitted=job) -> str:
        capsys.readouterr()
        script.warn_of_outputs_in_the_job_copy(config, submitted)
        return capsys.readouterr().err

    relative = script.config_from_argv(["--metadata_dir", "/data/m.parquet", "--storage_path", "runs"])
    assert warning(relative).startswith(f"warning: --storage_path resolves to {copy / 'runs'}, inside this job's copy")
    kept = dataclasses.replace(relative, storage_path=str(tmp_path / "runs"))
    assert warning(kept) == ""
    assert warning(dataclasses.replace(kept, output_dir="final")).startswith(
        f"warning: --output_dir resolves to {copy / 'final'}, inside")
    assert warning(dataclasses.replace(kept, storage_path="s3://bucket/runs")) == ""  # the run is kept on S3
    assert warning(relative, SubmittedJob("raysubmit_8", None)) == ""  # no working dir shipped: the user's folder

    backbone = str(tmp_path / "runs" / "vit_small16" / "final" / "teacher_backbone.pth")
    by_hand = shlex.split(script.probe_command(kept, backbone, None))
    as_job = shlex.split(script.probe_command(kept, backbone, job))
    assert as_job == ["ray", "job", "submit", "--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml", "--",
                      *by_hand]
    assert by_hand[0] == "python" and by_hand[1].endswith("experiments/linear_probe.py")
    given = dict(zip(by_hand[2::2], by_hand[3::2]))
    assert given == {"--pretrained_weights": backbone, "--arch": "vit_small", "--patch_size": "16",
                     "--image_size": "224", "--metadata_dir": "/data/m.parquet",
                     "--output_dir": str(tmp_path / "runs" / "probe")}  # beside the run
    # a relative --metadata_dir: absolute in the command typed here (it runs from any folder), as given in a job's
    relative_data = dataclasses.replace(kept, metadata_dir="data/m.parquet")
    assert os.path.abspath("data/m.parquet") in shlex.split(script.probe_command(relative_data, backbone, None))
    assert "data/m.parquet" in shlex.split(script.probe_command(relative_data, backbone, job))


def test_pretrain_prints_a_probe_only_for_metadata_a_probe_can_measure(ben_v1_metadata, eurosat_metadata, tmp_path):
    """pretrain.py printed `next: linear_probe.py ... --metadata_dir RUN'S` whenever the images had classes, and on
    metadata without a test split (the 6 BigEarthNet patches prepared without the official lists: train and
    validation; a table of training images) that command failed ('its test split is empty'). It now names what the
    metadata lacks and prints the probe for other labelled images."""
    import pandas as pd
    from conftest import EUROSAT

    from geodino.archive.prepare import PrepareConfig, prepare

    script = pretrain_script()
    backbone = str(tmp_path / "final" / "teacher_backbone.pth")
    pd.DataFrame({"path": pd.read_csv(EUROSAT / "labels.csv")["path"].head(3)}).to_csv(tmp_path / "u.csv", index=False)
    unlabelled = prepare(PrepareConfig(archive=str(tmp_path / "u.csv"), out=str(tmp_path / "u" / "metadata.parquet"),
                                       data_dir=str(EUROSAT), workers=1)).metadata_path

    def next_step(metadata) -> str:
        config = script.config_from_argv(["--metadata_dir", str(metadata), "--output_dir", str(tmp_path / "final")])
        return script.next_step(config, backbone, None)

    assert next_step(ben_v1_metadata).startswith("next: python ")  # the official lists' train, validation and test
    for metadata, problem in ((eurosat_metadata, "its test split is empty"),  # its 80 training images only
                              (unlabelled, "these images have no labels")):
        line = next_step(metadata)
        assert line.startswith(f"{metadata}: {problem}, so a probe cannot be measured on it: probe the teacher ")
        assert line.endswith("--metadata_dir LABELLED --output_dir " + str(tmp_path / "probe"))


def options_without_help(help_text: str) -> list[str]:
    """The options of an argparse --help listing that have no help text after them."""
    lines = help_text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.rstrip().endswith(("options:", "optional arguments:")))
    entries: list[list[str]] = []
    for line in lines[start + 1:]:
        if line.startswith("  -"):
            entries.append([line])
        elif line.startswith("   ") and entries:
            entries[-1].append(line)
        elif line.strip():  # the end of the options section (an epilog)
            break
    bare = []
    for first, *rest in entries:
        invocation, _, own_help = first.strip().partition("  ")
        if not own_help.strip() and not rest:
            bare.append(invocation)
    return bare


ENTRY_SCRIPTS = ("pretrain", "linear_probe", "predict", "sweep_probe", "prepare", "stream", "visualize",
                 "submit_sagemaker", "sagemaker_entry")


@pytest.mark.parametrize("script", ENTRY_SCRIPTS)
def test_every_flag_of_every_entry_script_has_help(script, capsys, monkeypatch):
    import importlib
    import sys

    from conftest import REPO

    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.syspath_prepend(str(REPO / "experiments"))
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    listing = capsys.readouterr().out
    assert "--help" in listing and options_without_help(listing) == [], listing
    sys.modules.pop(script, None)


def test_the_help_checker_finds_a_bare_flag():
    parser = argparse.ArgumentParser()
    parser.add_argument("--documented", help="what it does")
    parser.add_argument("--bare")
    parser.add_argument("--long_flag_whose_invocation_pushes_the_help_onto_the_next_line_of_the_listing", help="x")
    assert options_without_help(parser.format_help()) == ["--bare BARE"]


def test_mistyped_choices_are_refused_not_defaulted():
    for argv, flag in [(["--crops_on", "gpu"], "--crops_on"), (["--nonfinite_loss", "skp"], "--nonfinite_loss"),
                       (["--arch", "vit_huge"], "--arch"), (["--backend", "ncc"], "--backend")]:
        parser = argparse.ArgumentParser(prog="pretrain.py")
        add_dataclass_arguments(parser, PretrainConfig)
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


def test_the_readme_flag_reference_is_the_configs_own():
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "tools"))
    import flag_reference

    readme = (REPO / "README.md").read_text()
    assert flag_reference.readme_section(readme) == flag_reference.reference_markdown(), (
        "README's flag reference differs from the configs: run python tools/flag_reference.py --write")


def bad_value_cases(metadata: str, tmp: str) -> list[tuple[str, list[str], str]]:
    """One bad value of each kind, per entry script, and a fragment of the line the user must see."""
    import json
    import os

    import torch
    from conftest import BEN_V1_EXAMPLE, EUROSAT, free_port

    data = ["--metadata_dir", metadata]
    weights = ["--pretrained_weights", "random:vit_tiny/16", *data]
    table = str(EUROSAT / "labels.csv")
    os.makedirs(f"{tmp}/theirs/final")
    with open(f"{tmp}/theirs/final/teacher_backbone.pth", "wb") as handle:  # a user's own DINO weights
        handle.write(b"their weights")
    hashed = f"{tmp}/exp#3.pth"
    with open(hashed, "wb") as handle:
        handle.write(b"not a checkpoint")
    damaged = damaged_inputs(metadata, tmp)
    scene = str(sorted((EUROSAT / "images" / "Forest").glob("*.jpg"))[0])  # 64 px: a scene of 2 x 2 tiles of 32
    for folder in ("a", "b"):
        os.makedirs(f"{tmp}/{folder}")
        shutil.copy(scene, f"{tmp}/{folder}/x.jpg")
    with open(f"{tmp}/bad.tif", "w") as handle:
        handle.write("not a raster")
    patch = sorted(BEN_V1_EXAMPLE.iterdir())[0]
    product = f"{tmp}/S2A_MSIL2A_20170613T101031_N9999_R022_T32UNA_20170613T101031.SAFE/GRANULE/L2A/IMG_DATA/R10m"
    os.makedirs(product)
    with open(f"{product.split('/GRANULE')[0]}/MTD_MSIL2A.xml", "w") as handle:
        handle.write("<n1:Level-2A_User_Product")  # cut short by a failed download
    for band in ("B02", "B03", "B04", "B08"):  # a product's 10 m bands: one scene, not four grey images
        shutil.copy(patch / f"{patch.name}_{band}.tif", f"{product}/T32UNA_20170613T101031_{band}_10m.tif")
    other_run = os.path.join(tmp, "runs", "other")
    os.makedirs(os.path.join(other_run, "checkpoint_2026-11-27_10-00-00.000000"))
    with open(os.path.join(other_run, "settings.json"), "w") as handle:
        json.dump({"arch": "vit_base", "patch_size": 16, "out_dim": 65536, "norm_last_layer": True, "bands": "rgb",
                   "normalize": "max"}, handle)
    return [
        ("pretrain.py", ["--crops_on", "gpu", *data], "argument --crops_on: invalid choice: 'gpu'"),
        ("pretrain.py", ["--storage_path", os.path.join(tmp, "runs"), "--run_name", "other", "--arch", "vit_tiny",
                         *data], "holds a run made with other settings (--arch 'vit_base' there, 'vit_tiny' now)"),
        ("pretrain.py", ["--nonfinite_loss", "skp", *data], "invalid choice: 'skp'"),
        ("pretrain.py", ["--precision", "fp8", *data], "argument --precision: invalid choice: 'fp8'"),
        ("pretrain.py", ["--backend", "ncc", *data], "argument --backend: invalid choice: 'ncc'"),
        ("pretrain.py", ["--arch", "vit_huge", *data], "argument --arch: invalid choice: 'vit_huge'"),
        ("pretrain.py", ["--batch_size_per_gpu", "0", *data], "--batch_size_per_gpu must be greater than 0, not 0"),
        ("pretrain.py", ["--num_workers", "0", *data], "--num_workers must be greater than 0, not 0"),
        ("pretrain.py", ["--use_gpu", "maybe", *data], "expected true, false or auto, not 'maybe'"),
        ("pretrain.py", ["--lr", "-1", *data], "--lr must be greater than 0, not -1.0"),
        ("pretrain.py", ["--epochs", "0", *data], "--epochs must be greater than 0, not 0"),
        ("pretrain.py", ["--warmup_epochs", "10", "--epochs", "2", *data], "--warmup_epochs 10 is longer than"),
        ("pretrain.py", ["--local_crops_number", "-1", *data], "--local_crops_number must not be negative"),
        ("pretrain.py", ["--limit", "-5", *data], "--limit must be a number of patches greater than 0"),
        ("pretrain.py", ["--global_crops_size", "30", *data], "not a multiple of --patch_size 16"),
        ("pretrain.py", ["--batch_size_per_gpu", "512", *data], "is larger than the 80 training patches"),
        ("pretrain.py", ["--bands", "rgbb", *data], "--bands 'rgbb': the images of this table have the channels band1, band2, band3 ('rgbb' is not one of them)"),
        ("pretrain.py", ["--storage_path", "s3:/bucket/runs", *data], "is not a well-formed URI"),
        ("pretrain.py", ["--output_dir", "gs://bucket/runs", *data], "the gs:// scheme is not supported"),
        ("pretrain.py", ["--metadata_dir", f"{tmp}/nowhere"], "no metadata parquet there"),
        ("pretrain.py", ["--output_dir", f"{tmp}/theirs", *data],
         "final/teacher_backbone.pth already there and not written by geodino"),
        *([("pretrain.py", ["--launcher", "torchrun", "--use_gpu", "true", *data],
            "--use_gpu true but torch sees no CUDA device on this machine")] if not torch.cuda.is_available() else []),
        ("linear_probe.py", ["--label_fraction", "1.5", *weights], "--label_fraction must lie in (0, 1]"),
        ("linear_probe.py", ["--pretrained_weights", "random:vit_huge", *data], "unknown arch 'vit_huge'"),
        ("linear_probe.py", ["--pretrained_weights", f"{tmp}/none.pth", *data], "no such weights file or run folder"),
        ("linear_probe.py", ["--pretrained_weights", hashed, *data], f"{hashed}: refused to load"),  # '#' kept
        ("linear_probe.py", ["--num_labels", "3", *weights], "--num_labels 3 but"),
        ("sweep_probe.py", data, "give at least one --backbone NAME=SOURCE"),
        ("sweep_probe.py", ["--backbone", "r=random:vit_tiny/16", "--lrs", "0.1", "-1", *data],
         "--lrs must each be greater than 0, not -1.0"),
        ("sweep_probe.py", ["--backbone", "r=random:vit_tiny/16", "--label_fractions", "0", *data],
         "--label_fractions must each be in (0, 1]"),
        ("predict.py", ["--probe", f"{tmp}/none.pth", *weights], "--probe"),
        ("predict.py", ["--embeddings", "--threshold", "1.5", *weights], "--threshold must lie between 0 and 1"),
        ("predict.py", ["--embeddings", "--actors", "0", *weights], "--actors must be greater than 0"),
        ("predict.py", ["--embeddings", "--split", "Train", *weights], "invalid choice: 'Train'"),
        ("predict.py", ["--embeddings", "--data_dir", tmp, *weights], "cannot read image"),  # not the archive
        ("stream.py", ["--data_dir", tmp, *data], "cannot read image"),
        ("stream.py", ["--batch_size", "0", *data], "--batch_size_per_gpu must be at least 1, not 0"),
        ("visualize.py", ["--count", "0", *weights], "--count 0: draw at least 1 patch"),
        # folders written on this machine: an s3:// one became a local folder named `s3:`, reported as written to S3
        ("linear_probe.py", ["--output_dir", "s3://bucket/probe", *weights], "this folder is written on this machine"),
        ("pretrain.py", ["--output_dir", "s3://bucket/final", *data], "this folder is written on this machine"),
        ("predict.py", ["--embeddings", "--output_dir", "s3://bucket/preds", *weights], "written on this machine"),
        ("visualize.py", ["--output_dir", "s3://bucket/pics", *weights], "--output_dir 's3://bucket/pics': this folder"),
        ("sweep_probe.py", ["--backbone", "r=random:vit_tiny/16", "--output_dir", "s3://b/sweep", *data],
         "written on this machine"),
        ("prepare.py", [f"{tmp}/nowhere.csv", "--out", f"{tmp}/m.parquet"], "no such file or folder"),
        ("prepare.py", [table, "--workers", "-1", "--out", f"{tmp}/m.parquet"], "--workers must be 0"),
        ("prepare.py", [table, "--splits_dir", f"{tmp}/nowhere", "--out", f"{tmp}/m.parquet"], "--splits_dir"),
        ("prepare.py", [table, "--out", "s3:/bucket/m.parquet"], "--out 's3:/bucket/m.parquet' is not a well-formed"),
        ("tile.py", [f"{tmp}/nowhere.tif"], f"SCENE '{tmp}/nowhere.tif': no such file"),
        ("tile.py", [f"{tmp}/bad.tif", "--out", f"{tmp}/tiles"], f"{tmp}/bad.tif: cannot read the scene"),
        ("tile.py", [scene, "--out", f"{tmp}/tiles"], "the scene is 64x64 px, smaller than one --size 120 tile"),
        ("tile.py", [f"{tmp}/a/x.jpg", f"{tmp}/b/x.jpg", "--size", "32"], "share the name 'x', which names their tiles"),
        ("tile.py", [scene, "--size", "32", "--out", table], "is a file, not a folder"),
        ("tile.py", [scene, "--size", "32", "--out", "s3://bucket/tiles"], "tile.py writes to a local folder"),
        ("tile.py", [scene, "--size", "0"], "--size must be greater than 0, not 0"),
        ("tile.py", [f"{tmp}/theirs/final", "--size", "32"], "a folder without rasters in it"),
        ("tile.py", [f"{tmp}/scenes/*.tif", "--size", "32"], "a pattern the shell did not expand: leave out the quotes"),
        ("tile.py", [scene, "--size", "32", "--max_nodata", "1"], "--max_nodata must lie in [0, 1), not 1.0"),
        ("tile.py", [scene, "--size", "32", "--out", f"{tmp}/theirs"], "holds 1 files tile.py did not write"),
        ("tile.py", [damaged["archive"]], "a packed archive (a downloaded product), which tile.py does not open: "
                                          "unpack it (tar xf archive.tar.gz) and give the folder it makes"),
        ("tile.py", [str(BEN_V1_EXAMPLE)], "its rasters lie in the 6 folders below it"),
        ("tile.py", [scene, "--size", "32", "--bands", "B04"], "--bands B04: chooses the band files of a scene kept "
                                                              "as a file per band"),
        ("tile.py", [scene, "--bands", "B04,,B03"], "--bands 'B04,,B03': give each band once"),
        ("tile.py", [scene, "--size", "32", "--labels", f"{tmp}/nowhere.tif"], f"--labels '{tmp}/nowhere.tif': no"),
        ("tile.py", [scene, "--size", "32", "--labels", scene], "a land-cover map is one band of integer class values "
                                                                "with a georeference; this one has 3 bands of uint8"),
        ("tile.py", [scene, "--size", "32", "--labels", str(next(BEN_V1_EXAMPLE.glob("*/*_B02.tif")))],
         "the scene has no georeference, so --labels cannot be laid on its tiles"),
        ("tile.py", [scene, "--label_min", "0"], "--label_min must lie in (0, 1], not 0.0"),
        ("tile.py", [scene, "--labels", scene, "--label_names", table], "--label_names " + table + ": needs the "
                                                                      "columns value,name (it has path, label, split)"),
        ("tile.py", [scene, "--labels", scene, "--label_names", "corin"], "--label_names corin: no such file; give a "
         "legend CSV (value,name) or one of the legends built in: worldcover, corine, bigearthnet19"),
        # an MLflow server that is not there (before: MLflow retried for 4 minutes inside the Ray worker), a scheme
        ("pretrain.py", ["--mlflow_tracking_uri", f"http://127.0.0.1:{free_port()}", *data],
         "no MLflow server (nothing answers there); start one (mlflow server --host 127.0.0.1 --port 5000)"),
        ("sweep_probe.py", ["--backbone", "r=random:vit_tiny/16", "--mlflow_tracking_uri", "htp://127.0.0.1:5000",
                            *data], "--mlflow_tracking_uri htp://127.0.0.1:5000: MLflow knows no URI scheme 'htp'"),
        # values float() takes but no run can use
        ("pretrain.py", ["--lr", "nan", *data], "argument --lr: expected a finite number, not 'nan'"),
        ("pretrain.py", ["--global_crops_scale", "0.4", "inf", *data], "expected a finite number, not 'inf'"),
        ("sweep_probe.py", ["--backbone", "r=random:vit_tiny/16", "--lrs", "0.1", "nan", *data],
         "argument --lrs: expected a finite number"),
        ("prepare.py", [table, "--pixel_max", "inf", "--out", f"{tmp}/m.parquet"], "expected a finite number"),
        # files that are there but are not what the flag needs
        ("pretrain.py", ["--metadata_dir", table], f"{table} is a file, not the metadata parquet"),
        ("pretrain.py", ["--metadata_dir", damaged["parquet"]], "not a readable parquet file"),
        ("stream.py", ["--metadata_dir", damaged["parquet"]], "not a readable parquet file"),
        # no train split (tile.py's labels of a scene under 8 x 8 tiles: one block, one split): its splits named
        ("pretrain.py", ["--metadata_dir", damaged["test_only"]], "no patches of the train split, which pretraining "
                                                                  "reads; it holds test (80): give some images"),
        ("linear_probe.py", ["--pretrained_weights", "random:vit_tiny/16", "--metadata_dir", damaged["card"]],
         "the card beside the metadata is not valid JSON"),
        ("linear_probe.py", ["--pretrained_weights", damaged["empty"], *data], "the file is empty (0 bytes)"),
        ("linear_probe.py", ["--pretrained_weights", damaged["sidecar"], *data],
         "the data contract beside the weights is not valid JSON"),
        ("predict.py", ["--probe", damaged["weights"], *weights], "not a probe written by linear_probe.py"),
        ("predict.py", ["--probe", table, *weights], "not a PyTorch checkpoint"),
        ("visualize.py", weights, "holds no patches of that split; it holds train (80): choose one"),  # all train
        ("visualize.py", ["--images", "Forest_9999", "--split", "train", *weights],
         "--images: 1 of 1 names are not patches of the train split"),
        ("sweep_probe.py", ["--backbone", "=random:vit_tiny/16", *data], "give NAME=SOURCE"),
        ("prepare.py", [damaged["empty_folder"], "--out", f"{tmp}/m.parquet"], "found no patches to prepare"),
        ("prepare.py", [damaged["binary_table"], "--out", f"{tmp}/m.parquet"], "not a readable table"),
        ("prepare.py", [damaged["header_table"], "--out", f"{tmp}/m.parquet"], "the table has a header but no rows"),
        ("prepare.py", [damaged["semicolon_table"], "--out", f"{tmp}/m.parquet"], "looks separated by ';'"),
        ("stream.py", ["--data_dir", damaged["other_pack"], *data], "the pack was made from other metadata"),
        ("sagemaker_entry.py", [], "not on SageMaker: neither"),  # run here, not by a SageMaker job
        ("linear_probe.py", ["--data_dir", damaged["unfinished_pack"], *weights], "packing has not finished"),
        ("prepare.py", [damaged["excel_windows_table"], "--out", f"{tmp}/m.parquet"], "Excel: Save As 'CSV UTF-8'"),
        ("prepare.py", [damaged["spreadsheet"], "--out", f"{tmp}/m.parquet"], "a spreadsheet: save it as CSV"),
        ("prepare.py", [damaged["archive"], "--out", f"{tmp}/m.parquet"], "unpack it (tar xf archive.tar.gz)"),
        ("prepare.py", [damaged["scene"], "--out", f"{tmp}/m.parquet"], "one image: prepare reads a folder"),
        ("prepare.py", [damaged["labels"], "--out", f"{tmp}/m.parquet"], "a file prepare does not read"),
        ("prepare.py", [product.split("/GRANULE")[0], "--out", f"{tmp}/m.parquet"],
         "a Sentinel-2 product, a scene rather than patches: cut it into tiles (python experiments/tile.py"),
        ("tile.py", [product], "MTD_MSIL2A.xml: the product's metadata is not readable XML (unclosed token: line 1, "
                               "column 0), so its add offsets are unknown: download the product again, or pass"),
        ("prepare.py", [product, "--out", f"{tmp}/m.parquet"], "the band files of scene T32UNA_20170613T101031 (B02, "
                                                              "B03, B04, B08), not images of their own: cut it into"),
        ("prepare.py", [table, "--bands", "rgb", "--out", f"{tmp}/m.parquet"], "of your own images prepare keeps"),
        ("prepare.py", [str(BEN_V1_EXAMPLE), "--band_names", "B2", "--out", f"{tmp}/m.parquet"],
         "--band_names names the channels of your own images"),
        ("prepare.py", [table, "--out", metadata, "--pack", f"{tmp}/pack", "--pack_only", "--bands", "B04"],
         "of your own images prepare keeps every channel"),
        ("pretrain.py", ["--preset", "smal_cpu", *data], "--preset must be one of bigearthnet120, demo, seed"),
        ("pretrain.py", ["--backend", "nccl", "--use_gpu", "false", *data], "--backend nccl joins GPUs"),
        *([("pretrain.py", ["--backend", "nccl", "--launcher", "torchrun", *data], "auto with no GPU found")]
          if not torch.cuda.is_available() else []),
        ("pretrain.py", ["--backend", "smddp", *data], "SMDDP's AllReduce needs SageMaker's mpirun launcher"),
        ("pretrain.py", ["--launcher", "torchrun", "--storage_path", "s3://bucket/runs", *data],
         "the torchrun/mpirun launcher checkpoints to a local folder"),
        ("linear_probe.py", ["--n_last_blocks", "20", *weights], "--n_last_blocks 20: geodino's ViTs"),
        ("predict.py", ["--embeddings", "--split", "test", *weights], "--split test: "),  # the archive is train only
        # places that would write elsewhere than typed, or into a file
        ("pretrain.py", ["--run_name", "../elsewhere", *data], "--run_name '../elsewhere' must be one folder name"),
        ("sweep_probe.py", ["--backbone", "r=random:vit_tiny/16", "--run_name", "a/b", *data],
         "--run_name 'a/b' must be one folder name"),
        ("pretrain.py", ["--output_dir", table, *data], f"--output_dir '{table}' is a file, not a folder"),
        ("pretrain.py", ["--storage_path", f"{table}/runs", *data], f"{table} is a file, not a folder"),
        ("pretrain.py", ["--data_dir", f"{tmp}/moved-away", *data], "--data_dir"),
        ("linear_probe.py", ["--output_dir", table, *weights], "is a file, not a folder"),
        ("predict.py", ["--embeddings", "--output_dir", f"{table}/predictions", *weights], "is a file, not a folder"),
        ("prepare.py", [table, "--out", f"{tmp}/m.parquet", "--pack", table], "--pack"),
    ]


def damaged_inputs(metadata: str, tmp: str) -> dict[str, str]:
    """Files that exist but are not what they claim: a cut parquet, a card that is not JSON, weights of 0 bytes,
    a weights file whose data contract is damaged, tables that are not CSV, empty or ';'-separated."""
    import torch

    from geodino.archive.card import card_file
    from geodino.dino.models import create_backbone

    paths = {}
    for name, damaged_file, content in (("parquet", "metadata.parquet", b"PAR1 cut"),
                                        ("card", "metadata.json", b"{not json")):
        folder = os.path.join(tmp, f"damaged-{name}")
        os.makedirs(folder)
        shutil.copy(metadata, os.path.join(folder, "metadata.parquet"))
        shutil.copy(card_file(metadata), os.path.join(folder, "metadata.json"))
        with open(os.path.join(folder, damaged_file), "wb") as handle:
            handle.write(content)
        paths[name] = os.path.join(folder, "metadata.parquet")
    import pandas as pd

    paths["test_only"] = os.path.join(tmp, "test-only", "metadata.parquet")
    os.makedirs(os.path.dirname(paths["test_only"]))
    pd.read_parquet(metadata).assign(original_split="test").to_parquet(paths["test_only"])
    shutil.copy(card_file(metadata), card_file(paths["test_only"]))
    for name, manifest in (("other_pack", {"complete": True, "rows": 1}), ("unfinished_pack", {"complete": False})):
        paths[name] = os.path.join(tmp, name)
        os.makedirs(paths[name])
        with open(os.path.join(paths[name], "pack.json"), "w") as handle:
            json.dump(manifest, handle)
    paths["empty_folder"] = os.path.join(tmp, "not-an-archive")
    os.makedirs(paths["empty_folder"])
    paths["empty"] = os.path.join(tmp, "empty.pth")
    open(paths["empty"], "wb").close()
    paths["weights"] = os.path.join(tmp, "weights.pth")
    torch.save(create_backbone("vit_tiny", 16, 3).state_dict(), paths["weights"])
    paths["sidecar"] = os.path.join(tmp, "with-contract.pth")
    shutil.copy(paths["weights"], paths["sidecar"])
    with open(os.path.join(tmp, "with-contract.json"), "w") as handle:
        handle.write('{"bands": ')
    tables = {"binary_table.csv": b"\xcd\x00\xff" * 50, "header_table.csv": b"path,label,split\n",
              "semicolon_table.csv": b"path;label;split\nimages/a.jpg;Forest;train\n",
              "excel_windows_table.csv": "path,label\nimages/a.jpg,Forêt\n".encode("cp1252"),
              "spreadsheet.xlsx": b"PK\x03\x04" + bytes(60), "archive.tar.gz": bytes(60),
              "scene.tif": bytes(60), "labels.json": b"[]"}
    for name, content in tables.items():
        paths[name.split(".")[0]] = os.path.join(tmp, name)
        with open(paths[name.split(".")[0]], "wb") as handle:
            handle.write(content)
    return paths


def test_each_kind_of_bad_value_ends_in_one_line_and_exit_2_before_ray(eurosat_metadata, tmp_path):
    """The real entry scripts (their main, through run_entry, as `python experiments/X.py` runs them), all in one
    fresh process: exit status 2, one line `SCRIPT: error: ...` naming the flag, no traceback, and no Ray."""
    from entry_driver import run_lines

    cases = bad_value_cases(eurosat_metadata, str(tmp_path))
    wrong = []
    for (script, argv, fragment), result in zip(cases, run_lines([(script, argv) for script, argv, _ in cases])):
        lines = result["stderr"].strip().splitlines()
        if not (result["status"] == 2 and len(lines) == 1 and lines[0].startswith(f"{script}: error: ")
                and fragment in lines[0] and not result["ray_started"]):
            wrong.append((script, argv, result))
    assert not wrong, wrong


def test_a_ray_address_where_no_cluster_answers_is_one_line_not_a_wait(eurosat_metadata):
    """A RAY_ADDRESS left from a cluster that is gone made ray.init wait for its GCS for good (over five minutes
    of 'Failed to connect' lines, measured); a malformed one or a dashboard's http:// address ended in a
    traceback. Each is now one line naming RAY_ADDRESS, exit 2."""
    import socket

    from entry_driver import run_lines

    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    expected = {closed: "no Ray cluster answers there", "nonsense": "is not host:port",
                "http://127.0.0.1:8265": "is a dashboard's address, which `ray job submit` takes"}
    lines = [("stream.py", ["--metadata_dir", eurosat_metadata], {"RAY_ADDRESS": address}) for address in expected]
    for (address, fragment), result in zip(expected.items(), run_lines(lines)):
        printed = result["stderr"].strip().splitlines()
        assert result["status"] == 2 and len(printed) == 1, (address, result)
        assert printed[0].startswith(f"stream.py: error: RAY_ADDRESS={address}") and fragment in printed[0], printed
