"""PULSE sweeps: inputs x seeds x samples over every device of every host, resumable.

    python experiments/sweep.py --input_dir experiments/examples --output_dir results/sweep \\
        --seeds 0-7 --samples 4 --batch_per_device 4

On a TPU pod run the same command on every worker (`gcloud compute tpus tpu-vm ssh
NAME --worker=all --command="..."`): the workers find each other through JAX's
distributed runtime, each computes its share, and process 0 prints the summary.
Elsewhere pass --coordinator_address, --num_processes and --process_id (or set
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID). Run it again after
an interruption: finished results are kept and the rest is done. Choose
--batch_per_device with --plan_memory. Layout and guarantees: the docstring of
`pulse_jax/runs/sweep.py` and `pulse_jax/runs/engine.py`.

Exit status: 0 when every input was used, 1 when some input files could not be
used (each is named, the others are processed), 2 when the settings or folders
are wrong and nothing was run.
"""

from __future__ import annotations

import sys

from absl import app, flags

from pulse_jax import load_generator
from pulse_jax.runs import cli, distributed, engine
from pulse_jax.runs import sweep as sweeps
from pulse_jax.runs.config import NOISE_OPTIONS, ConfigError, check_applicable
from pulse_jax.runs.inputs import load_inputs

FLAGS = flags.FLAGS
cli.define_search_flags()
flags.adopt_module_key_flags(cli)

flags.DEFINE_string(
    "input_dir", None, "Folder of LR images (every file but hidden ones and a README)."
)
flags.DEFINE_string(
    "output_dir", "results/sweep", "Folder for the results and the manifest shards."
)
flags.DEFINE_list(
    "seeds",
    ["0"],
    "Seeds, comma-separated; a-b is every seed from a to b. Result (input i, seed, sample s) "
    "starts from fold_in(fold_in(key(seed), i), s).",
)
flags.DEFINE_integer("samples", 1, "Samples per input and seed.", lower_bound=1)
flags.DEFINE_integer(
    "batch_per_device",
    1,
    "Samples each device optimizes at once; results depend on it only through floating "
    "point (keep it when a sweep is resumed or compared). Largest that fits: --plan_memory.",
    lower_bound=1,
)
flags.DEFINE_boolean(
    "remat",
    False,
    "Recompute the generator's elementwise layers in the backward pass (jax.checkpoint) so "
    "that a larger --batch_per_device fits (1024 px StyleGAN).",
)
flags.DEFINE_boolean(
    "plan_memory",
    False,
    "Print the device memory the search needs for --batch_per_device 1, 2, 4... (up to the "
    "flag's value or the first that does not fit) and exit without running.",
)
flags.DEFINE_float("log_interval", 10.0, "Seconds between progress lines in logs.")
cli.define_split_groups_flag()
flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0, for clusters JAX does not detect by itself (not on Cloud TPU).",
)
flags.DEFINE_integer("num_processes", None, "Processes in the run (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process, 0..num_processes-1.")


def parse_seeds(values: list[str]) -> tuple[int, ...]:
    """["0-3", "9"] -> (0, 1, 2, 3, 9)."""
    seeds = []
    for value in values:
        first, _, last = value.partition("-")
        try:
            seeds += range(int(first), int(last or first) + 1)
        except ValueError:
            raise ConfigError(f"--seeds: {value!r} is not a seed or a-b") from None
    return tuple(seeds)


def config_from_flags() -> engine.Work:
    """The sweep described by the parsed flags."""
    return engine.Work.for_sweep(
        FLAGS.input_dir,
        FLAGS.output_dir,
        cli.search_config(),
        seeds=parse_seeds(FLAGS.seeds),
        samples=FLAGS.samples,
        batch_per_device=FLAGS.batch_per_device,
        remat=FLAGS.remat,
        log_interval=FLAGS.log_interval,
        split_groups=cli.split_groups(),
    )


def plan_memory(work: engine.Work, generator) -> None:
    """Prints the device memory per --batch_per_device for the inputs' largest size."""
    inputs, _ = load_inputs(work.input_dir, generator.resolution, resize=work.search.resize)
    side = max(item.side for item in inputs)
    rows = sweeps.plan_batch_size(
        generator, side, work.search.options, remat=work.remat, largest=work.group_size
    )
    print(f"device memory per batch_per_device ({side} px inputs, remat={work.remat}):")
    for row in rows:
        fits = {None: "", True: "  fits", False: "  does not fit"}[row["fits"]]
        print(f"  {row['batch_per_device']:4d}: {row['total_bytes'] / 2**30:8.2f} GiB{fits}")


def execute() -> int:
    """Runs with the parsed flags; returns the exit status (see the module docstring)."""
    if FLAGS.input_dir is None:
        print("error: --input_dir is required", file=sys.stderr)
        return 2
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    try:
        config = config_from_flags()
        generator = load_generator(config.search.generator)
        check_applicable(generator, [n for n in NOISE_OPTIONS if FLAGS[n].present])
        if FLAGS.plan_memory:
            plan_memory(config, generator)
            return 0
        summary = sweeps.run_sweep(config, generator)
    except Exception as e:  # noqa: BLE001 - user errors end in one line; bugs are raised again
        return cli.exit_status(e, 2)
    return 1 if summary.failed else 0


run, main = cli.entry_points(execute)


if __name__ == "__main__":
    app.run(main)
