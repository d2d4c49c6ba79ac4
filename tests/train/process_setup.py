"""What every test subprocess does first, as the CLI does: its own devices
(``NT_ROBUST_CPU_DEVICES``), XLA:CPU flags, the compilation cache and, when asked,
jax.distributed over gloo. Used by train_subprocess.py and step_subprocess.py.

    add_distributed_arguments(parser)
    args = parser.parse_args()
    start_jax(args)          # before anything touches a device
"""

import argparse


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coordinator")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)


def start_jax(args: argparse.Namespace) -> None:
    from nt_robust.cpu.devices import set_cpu_devices
    from nt_robust.cpu.setup import configure_xla_cpu
    from nt_robust.environment import enable_compilation_cache

    set_cpu_devices()  # from NT_ROBUST_CPU_DEVICES, as the CLI does
    configure_xla_cpu()
    enable_compilation_cache()
    if args.coordinator:
        from nt_robust.train.sharding import initialize_distributed
        initialize_distributed(args.coordinator, args.num_processes, args.process_id, cpu_collectives="gloo")
