"""Break the code on purpose, one way at a time, and check that the suite notices.

Each breakage below is one of issue 18's list: a small edit of a copy of the checkout (the working tree
is never touched), then the tests that must catch it are run against that copy. A breakage that leaves
its tests green is a gap in the suite. Prints one table row per breakage.

    python tools/break_and_check.py [--only NAME ...] [--workdir /tmp/geodino-breakages]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# name: (file, text to find, replacement, tests that must fail)
BREAKAGES = {
    "resume skips the student": (
        "platform/geodino/dino/state.py", 'self.student_plain.load_state_dict(state["student"])', "pass",
        ["tests/test_loop.py::test_resume_restores_student_teacher_centre_and_optimizer_exactly"]),
    "resume skips the teacher": (
        "platform/geodino/dino/state.py", 'self.teacher.load_state_dict(state["teacher"])', "pass",
        ["tests/test_loop.py::test_resume_restores_student_teacher_centre_and_optimizer_exactly"]),
    "resume skips the DINO centre": (
        "platform/geodino/dino/state.py", 'self.dino_loss.load_state_dict(state["dino_loss"])', "pass",
        ["tests/test_loop.py::test_resume_restores_student_teacher_centre_and_optimizer_exactly"]),
    "resume skips the optimizer": (
        "platform/geodino/dino/state.py", 'self.optimizer.load_state_dict(state["optimizer"])', "pass",
        ["tests/test_loop.py::test_resume_restores_student_teacher_centre_and_optimizer_exactly"]),
    "teacher never updated by EMA": (
        "platform/geodino/dino/loop.py", 'update_teacher(state.student_plain, state.teacher, float(plan["momentum"][it]))',
        "pass", ["tests/test_loop.py::test_the_teacher_moves_by_ema_and_stays_apart_from_the_student"]),
    "DDP does not wrap the student": (
        "platform/geodino/launch/torchrun.py", "if self.world_size == 1:\n            return model", "return model",
        ["tests/test_loop.py::test_ddp_ranks_hold_equal_students_and_skip_a_bad_step_together"]),
    "lr not scaled by the global batch": (
        "platform/geodino/dino/schedules.py", "cfg.lr * global_batch / 256.0", "cfg.lr",
        ["tests/test_loop.py::test_logged_lr_wd_and_momentum_are_the_schedules_at_each_epoch_end"]),
    "weight decay on the no-decay group": (
        "platform/geodino/dino/loop.py", "if i == 0:  # only the first group is regularised", "if True:",
        ["tests/test_loop.py::test_weight_decay_only_on_weight_matrices_and_the_last_layer_frozen_in_epoch_zero"]),
    "a negated probe loss": (
        "platform/geodino/transfer/probe.py", "            loss.backward()", "            (-loss).backward()",
        ["tests/test_metrics.py::test_the_probe_separates_separable_features_perfectly"]),
    "the sweep picks the worst configuration": (
        "platform/geodino/transfer/sweep.py", ".sort_values(METRIC, ascending=False)", ".sort_values(METRIC, ascending=True)",
        ["tests/test_transfer.py::test_sweep_two_backbones_two_configs_table_and_plot"]),
    "cached features re-ordered without their labels": (
        "platform/geodino/transfer/features.py",
        "    result = {key: value[order] for key, value in result.items()}",
        "    result = {key: (value[order] if key == 'features' else value) for key, value in result.items()}",
        ["tests/test_transfer.py::test_cached_features_are_reused_and_keyed_by_the_weights"]),
    "predict skips the probe's standardisation": (
        "platform/geodino/transfer/predict.py", "            self.probe.load_state_dict(state)",
        "            self.probe.load_state_dict(state)\n            self.probe.mean.zero_()\n            self.probe.std.fill_(1.0)",
        ["tests/test_transfer.py::test_predict_resumes_a_partly_written_output"]),
    "predict ignores the probe's n_last_blocks": (
        "platform/geodino/transfer/predict.py", 'n_last_blocks=probe_config["n_last_blocks"]', "n_last_blocks=1",
        ["tests/test_transfer.py::test_predict_resumes_a_partly_written_output"]),
    "band statistics over all splits": (
        "platform/geodino/archive/pixel_stats.py", 'pool = frame[frame["recommended"] & (frame["original_split"] == "train")]',
        "pool = frame", ["tests/test_prepare.py::test_official_lists_give_six_correct_rows"]),
    "band statistics without centring": (
        "platform/geodino/archive/pixel_stats.py", "np.maximum(total_sq / count - mean**2, 1e-12)", "total_sq / count",
        ["tests/test_prepare.py::test_official_lists_give_six_correct_rows"]),
    "the #student suffix ignored": (
        "platform/geodino/transfer/backbones.py", 'state = load_state_dict_file(path, which or "teacher")',
        'state = load_state_dict_file(path, "teacher")',
        ["tests/test_backbones.py::test_dino_format_checkpoint_loads_the_teacher"]),
    "SageMaker request validation skipped": (
        "platform/geodino/launch/sagemaker_job.py", "    validate(cfg)\n    boto_session = boto_session or boto3.Session()",
        "    boto_session = boto_session or boto3.Session()",
        ["tests/test_sagemaker.py::test_requests_sagemaker_would_reject_fail_here_first"]),
}


def broken_copy(workdir: Path, file: str, find: str, replace: str) -> Path:
    if workdir.exists():
        shutil.rmtree(workdir)
    shutil.copytree(REPO, workdir, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "__pycache__", "*.egg-info"))
    target = workdir / file
    text = target.read_text()
    if text.count(find) != 1:
        raise SystemExit(f"{file}: the text to break occurs {text.count(find)} times, not once: {find!r}")
    target.write_text(text.replace(find, replace))
    return workdir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="names of breakages to check (default: all)")
    parser.add_argument("--workdir", default="/tmp/geodino-breakages")
    args = parser.parse_args(argv)
    print("| breakage | tests | caught | seconds |\n| --- | --- | --- | --- |", flush=True)
    missed = 0
    for name, (file, find, replace, tests) in BREAKAGES.items():
        if args.only and name not in args.only:
            continue
        copy = broken_copy(Path(args.workdir), file, find, replace)
        env = {**os.environ, "PYTHONPATH": str(copy / "platform"),
               "GEODINO_SHARED_DATA": os.environ.get("GEODINO_SHARED_DATA", str(REPO.parent / "shared" / "data"))}
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                              cwd=copy, env=env, capture_output=True, text=True)
        caught = done.returncode == 1  # tests ran and failed (2+ would be an error of the run itself)
        missed += not caught
        print(f"| {name} | {', '.join(t.split('::')[-1] for t in tests)} | {'yes' if caught else 'NO (rc ' + str(done.returncode) + ')'} "
              f"| {time.perf_counter() - started:.0f} |", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
