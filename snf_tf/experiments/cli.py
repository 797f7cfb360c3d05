"""The ``snf-tf`` command (also ``python -m snf_tf``).

Subcommands (each a :class:`Command` in :data:`COMMANDS`, added with :func:`register`):

- ``snf-tf list`` — the paper's experiments and the number the paper reports for each.
- ``snf-tf info`` — versions, devices, whether TensorFlow runs oneDNN kernels.
- ``snf-tf train NAME [--epochs N] [--batch-size B] [--out DIR] [--data-dir D] [--resume]
  [--set KEY=VALUE ...] [--no-guard]`` — train one experiment into a run folder
  (:mod:`snf_tf.experiments.training`; ``--no-guard``: no rollback on a collapse).
- ``snf-tf evaluate CHECKPOINT.keras [--split test] [--dataset NAME]`` — exact NLL and bits/dim.
- ``snf-tf bench scaling|models|profile [...]`` — the benchmarks of
  :mod:`snf_tf.experiments.bench`.

- ``snf-tf export CHECKPOINT.keras OUT_DIR [--overwrite]`` — write a SavedModel that runs without
  snf_tf (see :mod:`snf_tf.export` for its endpoints).
- ``snf-tf sample MODEL -n 64 -o grid.png [--seed S] [--columns C] [--temperature T]`` — MODEL
  is an exported SavedModel directory (needs only TensorFlow) or a ``.keras`` checkpoint;
  samples go through the learned inverse with the same stateless seeds in both cases.

Bad input (missing file, unwritable output, n ≤ 0, unknown option) prints one line
``snf-tf: error: ...`` on stderr and exits with status 2.
"""

import argparse
import json
import os
import re
import sys

# TensorFlow's log level and oneDNN: set by snf_tf/__init__ (snf_tf._environment), which runs
# before this module and, in the snf-tf command, loads TensorFlow only when a command needs it

__all__ = ["COMMANDS", "Command", "CliError", "build_parser", "main", "register"]

PROG = "snf-tf"


class CliError(Exception):
    """A user error: reported as one line on stderr, exit status 2."""


#: exit status of a command stopped by Ctrl-C (128 + SIGINT, as shells report it)
INTERRUPTED = 130


def describe_fault(error):
    """One line for a fault of the machine (a full disk, a read-only path, TensorFlow's file
    writers), naming the file where the error does: never a traceback, never a whole array."""
    if isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror}"
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    message = re.sub(r"\{\{[^}]*\}\}\s*|\s*\[Op:\w+\]", "", message)  # TF's op and node names
    line = message.strip().splitlines()[0] if message.strip() else type(error).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def _is_fault(error):
    """OSError, or a TensorFlow error raised by a file writer or reader (``tf.errors.OpError``:
    TensorFlow reports a full disk as ``ResourceExhaustedError``, not ``OSError``)."""
    if isinstance(error, OSError):
        return True
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(error, tf.errors.OpError)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``prog: error: message``) and exit status 2."""

    def error(self, message):
        raise CliError(f"{message} (see '{self.prog} --help')")


# -- command registry ---------------------------------------------------------------------------
class Command:
    """One subcommand: ``name``, ``help``, ``add_arguments(parser)``, ``run(args) -> int``."""

    name = None
    help = None
    uses_tensorflow = True  # then TensorFlow is imported first, without its import-time noise

    def add_arguments(self, parser):
        """Add this command's arguments to its subparser."""

    def run(self, args):
        raise NotImplementedError


COMMANDS = {}


def register(command):
    """Add a :class:`Command` instance (or class) to the CLI; returns it (usable as decorator)."""
    instance = command() if isinstance(command, type) else command
    if not instance.name:
        raise ValueError("a Command needs a name")
    COMMANDS[instance.name] = instance
    return command


# -- argument helpers ------------------------------------------------------------------------------
def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def duration(text):
    """A time budget: ``90s``, ``30m``, ``2h`` or seconds
    (:func:`snf_tf.experiments.configs.parse_duration`)."""
    from snf_tf.experiments.configs import parse_duration

    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def positive_temperature(text):
    """A sampling temperature: a finite number > 0, in the words of
    ``snf_tf.model.check_temperature`` (checked here without loading TensorFlow)."""
    import math

    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"temperature must be a finite number > 0, got {text}")
    return value


def served_error_words(error):
    """The words of a served graph's ``InvalidArgumentError`` (its assertion's message), not
    TensorFlow's "Graph execution error" around them."""
    message = getattr(error, "message", None) or str(error)
    found = re.search(r"assertion failed: \[(.*?)\]\s*$", message, flags=re.MULTILINE)
    if found:
        return found.group(1)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Graph execution error", "Detected at",
                                                             "File ", "[[", "{{"))]
    return (useful or lines or [type(error).__name__])[0]


def _require_file(path, what):
    if not os.path.exists(path):
        raise CliError(f"{what} not found: {path}")
    if not os.path.isfile(path):
        raise CliError(f"{what} is not a file: {path}")


def _require_writable_location(path, what, directory=False):
    """Fail early when ``path`` cannot be created (before any model is loaded)."""
    from snf_tf._files import check_writable

    try:
        check_writable(path, what, directory=directory)
    except ValueError as error:
        raise CliError(str(error)) from None


def _load_checkpoint(path):
    from snf_tf import export

    _require_file(path, "checkpoint")
    try:
        return export.load_checkpoint(path)
    except (FileNotFoundError, ValueError) as error:
        raise CliError(str(error)) from None


# -- commands --------------------------------------------------------------------------------------
@register
class ExportCommand(Command):
    name = "export"
    help = "export a .keras checkpoint as a SavedModel that runs without snf_tf"

    def add_arguments(self, parser):
        parser.add_argument("checkpoint", help="a .keras checkpoint of a FlowModel")
        parser.add_argument("out_dir", help="directory to write the SavedModel to")
        parser.add_argument("--overwrite", action="store_true",
                            help="replace OUT_DIR if it already exists")

    def run(self, args):
        from snf_tf import export

        _require_file(args.checkpoint, "checkpoint")
        _require_writable_location(args.out_dir, "output directory", directory=True)
        if os.path.exists(args.out_dir) and os.listdir(args.out_dir) and not args.overwrite:
            raise CliError(f"output directory {args.out_dir} exists and is not empty "
                           "(pass --overwrite to replace it)")
        model = _load_checkpoint(args.checkpoint)
        try:
            export.export_saved_model(model, args.out_dir)
        except Exception as error:  # OSError, or TensorFlow's writer errors (a full disk)
            if not _is_fault(error):
                raise
            print(f"{PROG}: error: cannot write {args.out_dir}: {describe_fault(error)}",
                  file=sys.stderr)
            return 1
        print(f"exported {args.checkpoint} to {args.out_dir} "
              f"(endpoints: {', '.join(export.ENDPOINTS)})")
        return 0


@register
class SampleCommand(Command):
    name = "sample"
    help = "draw samples (learned inverse) from an export or a checkpoint into a PNG grid"

    def add_arguments(self, parser):
        parser.add_argument("model", help="an exported SavedModel directory or a .keras checkpoint")
        parser.add_argument("-n", "--num", type=positive_int, default=64,
                            help="number of samples (default 64)")
        parser.add_argument("-o", "--output", default="samples.png", help="PNG file to write")
        parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
        parser.add_argument("--columns", type=positive_int, default=None,
                            help="grid columns (default: about √n)")
        parser.add_argument("--temperature", type=positive_temperature, default=1.0,
                            help="scale of the latent draws (default 1; 0.7 gives cleaner, less "
                            "varied images; .keras checkpoints only)")
        parser.add_argument("--label", default=None, metavar="K|all",
                            help="class-conditional models: sample class K, or 'all' for one "
                            "row per class (n // classes each)")

    def run(self, args):
        import numpy as np

        if not os.path.exists(args.model):
            raise CliError(f"model not found: {args.model}")
        if os.path.isdir(args.model) and args.temperature != 1.0:
            raise CliError("an exported SavedModel samples at temperature 1 only; pass the "
                           ".keras checkpoint to sample at another --temperature")
        if args.label is not None and args.label != "all":
            try:
                args.label = int(args.label)
            except ValueError:
                raise CliError(f"--label must be a class number or 'all', got "
                               f"{args.label!r}") from None
        _require_writable_location(args.output, "output file")
        samples, columns = self.draw(args.model, args.num, args.seed, args.temperature,
                                     args.label)
        samples = np.asarray(samples)
        if samples.ndim != 4 or samples.shape[-1] not in (1, 3, 4):
            raise CliError(f"the model's samples have shape {samples.shape[1:]}, not an image "
                           "(NHWC with 1, 3 or 4 channels); cannot write a grid")
        write_grid(samples, args.output, columns=args.columns or columns)
        label = "" if args.label is None else f" of class {args.label}" if args.label != "all" \
            else ", one row per class"
        print(f"wrote {len(samples)} samples{label} to {args.output}")
        return 0

    @staticmethod
    def draw(path, n, seed, temperature=1.0, label=None):
        """``(samples, grid columns or None)`` from a SavedModel or a checkpoint."""
        import numpy as np

        if os.path.isdir(path):
            from snf_tf import export

            try:
                loaded = export.load_saved_model(path)
            except (FileNotFoundError, ValueError) as error:
                raise CliError(str(error)) from None
            conditional = any(spec.name == "y" for function in loaded.sample.concrete_functions
                              for spec in function.structured_input_signature[0])
            if conditional != (label is not None):
                raise CliError("this SavedModel is class-conditional: pass --label K or --label "
                               "all" if conditional else "--label: this SavedModel is not "
                               "conditional")
            if label is None:
                return loaded.sample(n=n, seed=seed).numpy(), None
            if label == "all":
                raise CliError("--label all needs the .keras checkpoint (the SavedModel's sample "
                               "takes one label, or n labels)")
            import tensorflow as tf

            try:
                return loaded.sample(n=n, y=tf.constant([label], tf.int32),
                                     seed=seed).numpy(), None
            except tf.errors.InvalidArgumentError as error:
                raise CliError(f"--label {label}: {served_error_words(error)}") from None
        model = _load_checkpoint(path)
        if (model.num_classes is not None) != (label is not None):
            raise CliError(f"this model is class-conditional ({model.num_classes} classes): pass "
                           "--label K or --label all" if model.num_classes is not None else
                           "--label: this model is not class-conditional")
        columns, context = None, None
        if label == "all":
            per_class = max(1, n // model.num_classes)
            context = np.repeat(np.arange(model.num_classes), per_class).astype("int32")
            n, columns = len(context), per_class
        elif label is not None:
            context = label
        try:
            samples = model.sample(n, temperature=temperature, seed=seed, context=context)
        except ValueError as error:
            raise CliError(f"--label {label}: {error}") from None
        return samples.numpy(), columns


@register
class ListCommand(Command):
    name = "list"
    help = "list the paper's experiments with the number the paper reports for each"
    uses_tensorflow = False

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def run(self, args):
        import json

        from snf_tf import experiments

        rows = [{"name": e.name, "dataset": e.dataset, "paper": e.paper,
                 "paper_epochs": e.paper_epochs, "epochs": e.defaults()["epochs"],
                 "description": e.description}
                for e in experiments.EXPERIMENTS.values()]
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        width = max(len(row["name"]) for row in rows)
        for row in rows:
            epochs = f"{row['epochs']} epochs" + ("" if row["paper_epochs"] else " by default")
            print(f"{row['name']:{width}s}  {row['paper']}  [{epochs}]\n"
                  f"{'':{width}s}  {row['description']}")
        return 0


@register
class InfoCommand(Command):
    name = "info"
    help = "versions, devices and the kernels TensorFlow uses here (oneDNN, XLA for splines)"

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print JSON instead of lines")

    def run(self, args):
        import json
        import platform

        import keras
        import tensorflow as tf
        import tensorflow_probability as tfp

        import snf_tf
        from snf_tf import _environment

        info = {"snf_tf": snf_tf.__version__, "tensorflow": tf.__version__,
                "keras": keras.__version__, "tensorflow_probability": tfp.__version__,
                "python": platform.python_version(), "machine": platform.machine(),
                "cpu_count": os.cpu_count(),
                "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
                "onednn": _environment.onednn_enabled(),
                "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
                "TFDS_DATA_DIR": os.environ.get("TFDS_DATA_DIR")}
        if args.json:
            print(json.dumps(info, indent=1))
        else:
            for key, value in info.items():
                shown = {True: "on", False: "off"}.get(value, value) if key == "onednn" else value
                print(f"{key}: {shown}")
        return 0


@register
class TrainCommand(Command):
    name = "train"
    help = "train one of the paper's experiments (see 'snf-tf list') into a run folder"

    def add_arguments(self, parser):
        parser.add_argument("experiment", help="experiment name (snf-tf list)")
        parser.add_argument("--epochs", type=positive_int, default=None,
                            help="epochs (default: the paper's)")
        parser.add_argument("--batch-size", type=positive_int, default=None)
        parser.add_argument("--out", default=None, help="run folder (default runs/EXPERIMENT)")
        parser.add_argument("--data-dir", default=None, help="tfds data folder "
                            "(default $TFDS_DATA_DIR)")
        parser.add_argument("--resume", action="store_true",
                            help="continue the run in --out from its last finished epoch")
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument("--train-examples", type=positive_int, default=None,
                            help="train on the first N training images only (quick runs)")
        parser.add_argument("--eval-examples", type=positive_int, default=None,
                            help="validate and test on the first N images only (quick runs)")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="override a setting or model argument, e.g. --set "
                            "hidden_channels=64 or --set learning_rate=5e-4 (repeatable)")
        parser.add_argument("--time-budget", type=duration, default=None, metavar="DURATION",
                            help="stop at the first batch past this much training time (90s, "
                            "30m, 2h; evaluation excluded), then evaluate exactly; without "
                            "--epochs the budget alone decides; --resume continues it")
        parser.add_argument("--eval-every-steps", type=positive_int, default=None, metavar="N",
                            help="also evaluate the validation and test splits exactly every N "
                            "training steps (metrics.json: eval_points)")
        parser.add_argument("--quiet", action="store_true", help="one line per epoch")
        parser.add_argument("--no-guard", action="store_true",
                            help="no rollback on a collapse (validation NLL jump, ‖RW − I‖ "
                            "too large, non-finite loss): a non-finite loss stops the run")

    @staticmethod
    def overrides(args):
        """The settings of ``--set KEY=VALUE`` and of the flags that name a setting; a flag and
        a ``--set`` of the same setting must agree (``ValueError`` otherwise)."""
        from snf_tf import experiments

        overrides = dict(experiments.parse_override(text) for text in args.set)
        flags = {"epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed,
                 "train_examples": args.train_examples, "eval_examples": args.eval_examples,
                 "guard": False if args.no_guard else None, "time_budget": args.time_budget,
                 "eval_every_steps": args.eval_every_steps}
        for key, value in flags.items():
            if value is None:  # flag not given: a --set of the same setting stands
                continue
            if key in overrides and overrides[key] != value:
                flag = "--no-guard" if key == "guard" else f"--{key.replace('_', '-')} {value}"
                raise ValueError(f"{flag} and --set {key}={json.dumps(overrides[key])} disagree; "
                                 "give the setting once")
            overrides[key] = value
        if overrides.get("time_budget") is not None and "epochs" not in overrides \
                and not args.resume:
            from snf_tf.experiments.training import BUDGET_EPOCHS
            overrides["epochs"] = BUDGET_EPOCHS  # the budget decides when training ends
        return overrides

    def run(self, args):
        from snf_tf.experiments import training

        try:
            overrides = self.overrides(args)
            out = args.out or os.path.join("runs", args.experiment.replace("/", "_"))
            prepared = training.prepare(args.experiment, out, resume=args.resume,
                                        data_dir=args.data_dir, **overrides)
        except (ValueError, FileNotFoundError) as error:
            raise CliError(str(error)) from None
        resume = f"{PROG} train {args.experiment} --out {out} --resume" + (
            f" --data-dir {args.data_dir}" if args.data_dir else "")
        if prepared.completes:
            done = (f"its time budget of {prepared.cfg['time_budget']:.0f} s is spent"
                    if prepared.budget_spent else
                    f"all {prepared.cfg['epochs']} epochs are trained")
            print(f"{out}: {done}; writing the final outputs", flush=True)
        try:
            metrics = prepared.train(verbose=2 if args.quiet else "auto")
        except training.TrainingDiverged as error:
            print(f"{PROG}: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"\n{PROG}: interrupted; {self._kept(out)}. Continue with: {resume}",
                  file=sys.stderr)
            return INTERRUPTED
        except Exception as error:
            if not _is_fault(error):
                raise
            print(f"{PROG}: error: {describe_fault(error)}; {self._kept(out)}. Once that is "
                  f"fixed, continue with: {resume}", file=sys.stderr)
            return 1
        print(prepared.summary(metrics, command=PROG, data_dir=args.data_dir))
        return 0

    @staticmethod
    def _kept(out):
        """What a stopped run kept: its last backed-up epoch."""
        from snf_tf.experiments.run_folder import RunFolder

        try:
            epoch = RunFolder(out).saved_epoch()
        except ValueError:
            epoch = None
        return (f"the run in {out} keeps its last finished epoch ({epoch})" if epoch else
                f"no epoch of the run in {out} had finished")


@register
class EvaluateCommand(Command):
    name = "evaluate"
    help = "exact NLL (nats and bits/dim) of a .keras checkpoint on a dataset split"

    def add_arguments(self, parser):
        parser.add_argument("checkpoint", help="a .keras checkpoint of a FlowModel")
        parser.add_argument("--split", default="test",
                            help="train, validation, test, or a tfds split string (default test)")
        parser.add_argument("--dataset", default=None, help="dataset name (default: the "
                            "config.json of the checkpoint's run folder)")
        parser.add_argument("--data-dir", default=None)
        parser.add_argument("--batch-size", type=positive_int, default=500)
        parser.add_argument("--examples", type=positive_int, default=None,
                            help="only the first N examples of the split")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def run(self, args):
        import json

        from snf_tf import data

        _require_file(args.checkpoint, "checkpoint")
        dataset = args.dataset or self.dataset_of(args.checkpoint)
        model = _load_checkpoint(args.checkpoint)
        try:  # class-conditional models are evaluated on (image, label) pairs: log p(x | y)
            split = data.load(dataset, args.split, args.batch_size, data_dir=args.data_dir,
                              limit=args.examples, labels=model.num_classes is not None)
        except (ValueError, FileNotFoundError) as error:
            raise CliError(str(error)) from None
        spec = split.element_spec
        shape = tuple((spec[0] if isinstance(spec, tuple) else spec).shape[1:])
        if model.built and tuple(model.data_shape) != shape:
            raise CliError(f"{args.checkpoint} models {model.data_shape} inputs but {dataset} "
                           f"has {shape} images")
        result = model.evaluate(split, verbose=0, return_dict=True)
        result = {"checkpoint": args.checkpoint, "dataset": dataset, "split": args.split,
                  "nll": float(result["nll"]), "bpd": float(result["bpd"])}
        if args.json:
            print(json.dumps(result))
        else:
            print(f"{dataset} {args.split}: NLL {result['nll']:.2f} nats = "
                  f"{result['bpd']:.4f} bits/dim")
        return 0

    @staticmethod
    def dataset_of(checkpoint):
        from snf_tf.experiments.run_folder import RunFolder

        folder = RunFolder(os.path.dirname(os.path.abspath(checkpoint)))
        if not os.path.isfile(folder.file(RunFolder.CONFIG)):
            raise CliError(f"cannot tell which dataset {checkpoint} was trained on (no "
                           "config.json beside it); pass --dataset")
        try:
            dataset = folder.read_config()["config"].get("dataset")
        except ValueError as error:
            raise CliError(f"{error}; or pass --dataset") from None
        if dataset == "normal":
            raise CliError("the snf_timescaling experiment has synthetic data; nothing to "
                           "evaluate on")
        return dataset


@register
class BenchCommand(Command):
    name = "bench"
    help = ("benchmarks: 'scaling' (one layer's step time vs D, Fig. 4), 'profile' (one "
            "experiment's step split by layer family, with its compute floor) or 'models' (ms per "
            "batch and per sample of the Table-1 models, Table 3)")
    #: the command's benchmark names and their modules in snf_tf.experiments.bench
    benchmarks = {"scaling": "scaling", "models": "timing", "profile": "profile"}

    def add_arguments(self, parser):
        parser.add_argument("benchmark", choices=list(self.benchmarks))
        parser.add_argument("options", nargs=argparse.REMAINDER,
                            help="the benchmark's own options (snf-tf bench NAME --help)")

    def run(self, args):
        import importlib

        module = importlib.import_module(
            f"snf_tf.experiments.bench.{self.benchmarks[args.benchmark]}")
        try:
            module.main(args.options)
        except SystemExit as exit_:  # argparse of the benchmark: --help (0) or bad option (2)
            return exit_.code if isinstance(exit_.code, int) else 2
        return 0


def write_grid(samples, path, columns=None):
    """Write ``[n, H, W, C]`` samples on the 0..256 scale as a PNG grid (non-finite values → 0)."""
    from snf_tf.images import image_grid, save_png

    # a fault while writing (a full disk) is one line from main(), exit status 1; the file
    # that was at ``path`` stays as it was
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_png(path, image_grid(samples, columns=columns))


# -- entry point -----------------------------------------------------------------------------------
def build_parser():
    parser = _Parser(prog=PROG, description="Self Normalizing Flows (Keller et al., ICML 2021).")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(_command=command)
    return parser


def main(argv=None):
    """Run the CLI; returns the exit status (0 ok, 2 bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "_command", None) is None:
            raise CliError(f"a command is required: {', '.join(COMMANDS)} (see '{PROG} --help')")
        if args._command.uses_tensorflow:
            from snf_tf import _environment

            _environment.import_tensorflow_quietly()
            import snf_tf

            snf_tf.register_serializables()  # any checkpoint the package writes loads
        return int(args._command.run(args) or 0)
    except CliError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as error:  # a fault of the machine: one line, not a traceback
        if not _is_fault(error):
            raise
        print(f"{PROG}: error: {describe_fault(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
