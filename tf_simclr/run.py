"""tf-simclr: the SimCLRv2 binary (pretrain, finetune, distill; train, eval, train_then_eval).

Flags keep the names of google-research/simclr where the meaning is the same, so its recipes
translate directly; recipes for this project live in ``flags/`` and are passed with
``--flagfile`` from any directory (an include inside a flagfile is found beside it). Every flag
is validated (by the configuration dataclasses and the checks below) before any data is read or
any model is built; the data, the batch split over the replicas and the model_dir's lock are
checked before any file is written.

    tf-simclr --flagfile=flags/fashion_mnist/pretrain.flags --model_dir=/tmp/run/pretrain

The architecture comes from what a command starts from: ``--checkpoint`` (a run, a hub module
or a reference checkpoint) decides the shape flags (resnet_depth, width_multiplier, sk_ratio,
se_ratio, cifar_stem, proj_head_mode, num_proj_layers, proj_out_dim), and the run already in
``--model_dir``, when the command evaluates or resumes it, decides them and ft_proj_selector.
A flag typed on the command line is the user's word: when it contradicts that architecture the
command is refused (status 2, naming both values) before anything is written. A flag read from
a flagfile (a recipe of ``flags/`` or the user's own, included or not) is a recipe's default:
it gives way, and one log line names what was taken, e.g. ``architecture from
--checkpoint=PATH: width_multiplier 1.0 (flagfile said 0.25)``. A flag counts as typed when its
last occurrence, the one whose value absl keeps, is on the command line outside any flagfile
(``--width_multiplier=1 --flagfile=recipe.flags`` leaves the recipe's value, a flagfile's).

``--print_config`` prints the configuration the command would run with, resolved (flagfiles,
flags, the architecture adopted, defaults), each value with where it came from, and what the
run decides from the data (it reads the dataset's size and classes: a batch capped to a small
training set, the number of classes, the total steps); it trains and writes nothing. A command
the run would refuse (e.g. a resume that changes the run) is refused the same way, status 2.

The same from Python: ``tf_simclr.train(tf_simclr.config_from_flags([...flags...]))``.

Exit status: 0 done (also when the run had already finished: nothing is changed), 1 an error
(a full disk, or a lost worker of a multi-worker run, in one line), 2 refused before any work
(bad flags or data, the model_dir in use by another run, the other workers of a multi-worker
run not there after ``--worker_timeout_seconds``), 3 stopped on NaN or Inf, 143 stopped by
SIGTERM and 130 by SIGINT (Ctrl-C).

SIGTERM or SIGINT during training stops every worker at the end of the current
``--steps_per_loop`` call, saves a checkpoint there and says so in one line, e.g.
``tf-simclr: SIGTERM received: saved RUN/ckpt/ckpt-7 at step 7; the same command resumes from
it.``; rerunning the command resumes from it exactly. Before training (reading data, building
the model) Ctrl-C stops at once; the newest checkpoint, if any, is where the same command
resumes. A multi-worker worker waiting for the others stops at once on either signal.
"""

from __future__ import annotations

import json
import logging
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from absl import app, flags

from tf_simclr.command_line import (
    FLAG_SCHEMA,
    PHASE,
    ParsedFlags,
    configs_from_flags,
    define_flags,
    describe_config,
    parse_command,
    parse_flags,
    resolve_flags,
)
from tf_simclr.flag_schema import install_grouped_help
from tf_simclr.logs import quiet_tensorflow_logs, start_tensorflow
from tf_simclr.model_dir import ModelDirInUseError

# The flag functions stay importable from here for scripts that parse tf-simclr command lines.
__all__ = [
    "FLAG_SCHEMA",
    "configs_from_flags",
    "define_binary_flags",
    "define_flags",
    "main",
    "parse_flags",
    "run_main",
]

PRINT_CONFIG_HELP = (
    "Print the configuration this command would run with (flagfiles, flags, the architecture "
    "of --checkpoint or of the run in --model_dir, defaults; each value with where it came "
    "from) and what the run decides from the data, whose size and classes are read; train and "
    "write nothing."
)


def define_binary_flags(flag_values: flags.FlagValues) -> None:
    """The flags of the binary: every configuration flag (:func:`define_flags`) and
    ``--print_config``, an action rather than a setting."""
    define_flags(flag_values)
    flags.DEFINE_bool(
        "print_config",
        False,
        PRINT_CONFIG_HELP,
        flag_values=flag_values,
        module_name=FLAG_SCHEMA.module_name(PHASE),
    )


def _refuse(reason: str, error: BaseException) -> int:
    print(f"tf-simclr: {reason}: {error}", file=sys.stderr)
    return 2


def main(parsed: ParsedFlags) -> int:
    """Run what the parsed command line asks for: print its configuration, or train
    (:func:`tf_simclr.train`) and print the result; returns the exit status."""
    start_tensorflow()
    quiet_tensorflow_logs()
    try:
        resolved = resolve_flags(parsed)
    except ValueError as error:
        return _refuse("invalid flags", error)
    from tf_simclr import checkpoints
    from tf_simclr.model_dir import first_line, is_disk_full
    from tf_simclr.training import api
    from tf_simclr.training.loop import TrainingInterruptedError
    from tf_simclr.training.preemption import exit_status
    from tf_simclr.training.strategy import (
        ClusterStartError,
        ClusterWaitInterruptedError,
        lost_worker,
    )

    config = resolved.config
    model_dir = config.train.model_dir
    try:
        if parsed.values["print_config"].value:
            plan = api.plan(config)
            decided = {
                "replicas": plan.replicas,
                "num_train_examples": plan.num_train_examples,
                "total_steps": plan.total_steps,
            }
            print(describe_config(resolved, plan.config, decided))
            return 0
        result = api.train(config)
    except api.InvalidConfigError as error:
        return _refuse("cannot start", error)
    except ModelDirInUseError as error:
        print(f"tf-simclr: {error}", file=sys.stderr)
        return 2
    except ClusterStartError as error:
        return _refuse("cannot start", error)
    except api.NonFiniteLossError as error:
        logging.getLogger("tf_simclr").error("%s", error)
        return 3
    except TrainingInterruptedError as error:
        print(f"tf-simclr: {error}; the same command resumes from it.", file=sys.stderr)
        return exit_status(error.signal_name)
    except ClusterWaitInterruptedError as error:
        print(f"tf-simclr: {error}.", file=sys.stderr)
        return exit_status(error.signal_name)
    except KeyboardInterrupt:
        latest = checkpoints.latest_checkpoint(model_dir)
        where = f"resumes from {latest}" if latest else "starts over (no checkpoint yet)"
        if config.train.mode == "eval":
            where = "evaluates again"
        print(f"tf-simclr: interrupted; the same command {where}.", file=sys.stderr)
        return 130
    except Exception as error:
        lost = lost_worker(error) if config.distribution.strategy == "multi_worker" else None
        if lost:
            latest = checkpoints.latest_checkpoint(model_dir)
            print(
                f"tf-simclr: lost a worker of the cluster ({lost}); the same command on every "
                f"worker resumes from {latest or 'the start'}.",
                file=sys.stderr,
            )
            return 1
        if not is_disk_full(error):
            raise
        latest = checkpoints.latest_checkpoint(model_dir)
        print(
            f"tf-simclr: disk full while writing to {model_dir} ({first_line(error)}); "
            f"free some space, then the same command resumes from {latest or 'the start'}.",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


def _parse_command(argv: list[str]) -> ParsedFlags:
    """:func:`parse_command` on absl's global flags (which hold the help flags and absl's
    own); an unknown flag, a bad value or a missing flagfile exits with 2 like every invalid
    flag."""
    try:
        return parse_command(flags.FLAGS, argv)
    except ValueError as error:
        print(f"tf-simclr: invalid flags: {error}", file=sys.stderr)
        sys.exit(2)


def run_main() -> None:
    """Console-script entry point (``tf-simclr``)."""
    define_binary_flags(flags.FLAGS)
    install_grouped_help(__doc__, FLAG_SCHEMA)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # absl hands what the parser returns (the parsed command line) to main untouched.
    app.run(lambda parsed: sys.exit(main(parsed)), flags_parser=_parse_command)


if __name__ == "__main__":
    run_main()
