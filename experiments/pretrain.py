"""DINO pretraining on Ray Train: geodino's main job.

With no --metadata_dir it generates the embedded demo archive, prepares it, and
pretrains a small ViT on it with settings sized for a laptop CPU (a few minutes).
Flags follow facebookresearch/dino's main_dino.py; `--help` lists them all.
On a running Ray cluster (see cluster/README.md), from the checkout:
  ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python experiments/pretrain.py ...
Without Ray (SMDDP, or a plain PyTorch baseline):
  torchrun --nproc_per_node 8 experiments/pretrain.py --launcher torchrun --use_gpu ...
"""

import argparse
import dataclasses
import os
import shlex
import sys

from geodino import cli, storage
from geodino.archive.card import load_card
from geodino.archive.demo import prepared_demo
from geodino.cli import add_dataclass_arguments, given_flags, run_entry
from geodino.data.config import unprobeable_split
from geodino.dino.config import PretrainConfig
from geodino.dino.presets import preset_config
from geodino.launch import run_pretraining
from geodino.ray_cluster import SubmittedJob, submitted_job


def script_path(name: str) -> str:
    """An entry script beside this one, as the user can type it from where they are."""
    return cli.script_path(name, beside=__file__)


def config_from_argv(argv: list[str] | None) -> PretrainConfig:
    """Defaults, then --preset (the demo preset when no --metadata_dir is given), then every flag typed."""
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, PretrainConfig)
    args = parser.parse_args(argv)
    given = given_flags(parser, argv)
    typed = {name: value for name, value in vars(args).items() if name in given}
    return preset_config(args.preset or (None if args.metadata_dir else "demo"), typed)


# A k-NN AP difference smaller than this is not called a win or a loss: on a held-out split of ~100 patches one
# run's AP moves by about this much (the demo's k-NN AP over seeds 0-3: 0.790-0.811, random init 0.774-0.791).
KNN_AP_MARGIN = 0.01


def knn_verdict(knn_ap: float, random_ap: float) -> str:
    """The run's k-NN AP against the same network at random init, in words that claim no more than one run shows."""
    if knn_ap - random_ap > KNN_AP_MARGIN:
        return "ahead of random init"
    if random_ap - knn_ap > KNN_AP_MARGIN:
        return "BEHIND random init"
    return f"level with random init (within {KNN_AP_MARGIN} AP, one run)"


def warn_of_outputs_in_the_job_copy(config: PretrainConfig, job: SubmittedJob | None) -> None:
    """A relative --storage_path (such as the default `runs`) in a submitted job resolves inside Ray's copy of the
    working dir, which Ray deletes when it cleans up the job's files: say so while the run can still be stopped.
    With the run kept at an s3:// prefix, the default --output_dir (a local copy of the final checkpoint) may stay
    scratch; one the user typed may not."""
    if job is None:
        return
    store = config.resolved_storage()
    if not storage.is_uri(store) and job.holds(store):
        flag_name, path = "--storage_path", store
    elif config.output_dir and job.holds(config.resolved_output_dir()):
        flag_name, path = "--output_dir", config.resolved_output_dir()
    else:
        return
    print(f"warning: {flag_name} resolves to {path}, inside this job's copy of --working-dir, which Ray deletes "
          "when it cleans up the job's files; give an absolute folder (or s3://) that outlives the job",
          file=sys.stderr)


def probe_command(config: PretrainConfig, backbone_file: str, job: SubmittedJob | None,
                  metadata_dir: str | None = None) -> str:
    """The linear probe of what this run trained, as the user types it next: on their machine after a local run,
    as a job on the same cluster after a submitted one (the user types it in the checkout they submitted from).
    The probe sees whole images at the size the teacher saw its global crops (as the k-NN monitor does), and
    writes beside the run. A local run's paths are absolute, so that the command runs from any folder.
    `metadata_dir`: other labelled images than the run's."""
    metadata_dir = metadata_dir or (config.metadata_dir if job else storage.absolute(config.metadata_dir))
    probe_args = ["--pretrained_weights", backbone_file, "--arch", config.arch, "--patch_size", str(config.patch_size),
                  "--image_size", str(config.global_crops_size),
                  "--metadata_dir", metadata_dir,
                  "--output_dir", os.path.join(os.path.dirname(config.resolved_output_dir()), "probe")]
    submit = ["ray", "job", "submit", "--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml", "--"]
    return shlex.join([*(submit if job else []), "python", script_path("linear_probe.py"), *probe_args])


def main(argv: list[str] | None = None) -> int:
    config = config_from_argv(argv)
    config.validate()  # before the demo is generated or Ray starts
    if not config.metadata_dir:
        config = dataclasses.replace(config, metadata_dir=prepared_demo())
        print(f"no --metadata_dir: pretraining on the embedded demo archive (preset {config.preset})", file=sys.stderr)
    job = submitted_job()
    warn_of_outputs_in_the_job_copy(config, job)
    result = run_pretraining(config)
    if result is None:  # a rank other than 0 under torchrun / mpirun
        return 0
    first, last = result.metrics[0], result.metrics[-1]
    print(f"\nfinished {len(result.metrics)} epochs: loss {first['loss']:.4f} -> {last['loss']:.4f}, teacher entropy "
          f"{first['teacher_entropy']:.2f} -> {last['teacher_entropy']:.2f} of max {last['max_entropy']:.2f} "
          f"(batch-mean {last['teacher_batch_entropy']:.2f}), {last['images_per_s']:.1f} images/s")
    if "knn_ap" in last:
        verdict = knn_verdict(last["knn_ap"], last["knn_random_ap"])
        top1 = f", top-1 {last['knn_top1']:.3f} vs {last['knn_random_top1']:.3f}" if "knn_top1" in last else ""
        print(f"k-NN on held-out labelled images: AP {last['knn_ap']:.3f} vs {last['knn_random_ap']:.3f} for the same "
              f"network at random init{top1}: DINO is {verdict}")
    print(f"checkpoint (DINO format): {result.checkpoint_dir}/checkpoint.pth  (stored at {result.storage_checkpoint})")
    print(f"teacher backbone (timm keys): {result.backbone_file}")
    print(f"TensorBoard (every run and sweep in this storage): tensorboard --logdir {config.resolved_storage()} "
          "--host 127.0.0.1")
    print(next_step(config, result.backbone_file, job))
    return 0


def next_step(config: PretrainConfig, backbone_file: str, job: SubmittedJob | None) -> str:
    """The probe command when the run's metadata can be probed; else why not, and the probe of other labelled
    images (a command printed as the next step must run: a probe needs labelled train and test splits)."""
    problem = ("these images have no labels" if not load_card(config.metadata_dir)["classes"]
               else unprobeable_split(config.metadata_dir))
    if problem is None:
        return f"next: {probe_command(config, backbone_file, job)}"
    elsewhere = probe_command(config, backbone_file, job, metadata_dir="LABELLED")
    return (f"{config.metadata_dir}: {problem}, so a probe cannot be measured on it: probe the teacher backbone on "
            f"labelled images with train and test splits (a table with labels, or a folder of class folders, through "
            f"{script_path('prepare.py')}): {elsewhere}")


if __name__ == "__main__":
    sys.exit(run_entry("pretrain.py", main))
