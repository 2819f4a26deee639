"""Submit geodino pretraining or probing as a SageMaker training job (or print the request with --dry_run).

  python experiments/submit_sagemaker.py pretrain --role ARN --instance_type ml.p4d.24xlarge --instance_count 2 \\
      --metadata s3://bucket/prepared --train s3://bucket/BigEarthNet-v1.0 --output_path s3://bucket/jobs \\
      --backend nccl --dry_run -- --arch vit_small --epochs 100 --batch_size_per_gpu 64

Flags after `--` are the task's own (experiments/pretrain.py or experiments/linear_probe.py) and
become the job's hyperparameters. Credentials come from the standard AWS chain and are never
written into the request.
"""

import argparse
import sys

from geodino import cli
from geodino.cli import add_dataclass_arguments, dataclass_from_args, parse_config
from geodino.errors import ConfigError
from geodino.launch.sagemaker_job import JobRequestError, SageMakerJobConfig, job_request, submit, to_json


def task_hyperparameters(task: str, argv: list[str]) -> dict[str, str]:
    """--name value pairs of the task's flags, checked against the task's own parser so typos fail here."""
    from geodino.dino.config import PretrainConfig
    from geodino.transfer.linear_probe import LinearProbeConfig

    parse_config(PretrainConfig if task == "pretrain" else LinearProbeConfig, argv, prog=f"submit_sagemaker.py {task}"
                 ).validate()  # the task's own checks, as its command line runs them: typos fail here, not on AWS
    pairs, name = {}, None
    for token in argv:
        if token.startswith("--"):
            name = token[2:]
            pairs[name] = "true"  # a bare boolean flag
        elif name is not None:
            pairs[name] = token if pairs[name] == "true" else f"{pairs[name]} {token}"
    return pairs


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    task_argv = argv[argv.index("--") + 1:] if "--" in argv else []
    own_argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, SageMakerJobConfig)
    if own_argv and own_argv[0] in ("pretrain", "probe"):
        own_argv = ["--task", *own_argv]
    args = parser.parse_args(own_argv)
    config = dataclass_from_args(SageMakerJobConfig, args)
    try:
        config.hyperparameters = task_hyperparameters(config.task, task_argv)
        if config.dry_run:
            print(to_json(job_request(config)))
        else:
            print(f"submitted SageMaker training job {submit(config)}")
    except (JobRequestError, ConfigError) as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_entry("submit_sagemaker.py", main))
