"""Run under `accelerate launch --use_fsdp --fsdp_version 2 ... --num_processes 2` by tests/test_fsdp.py.

accelerate 1.15 has no FSDP for CPU processes (ACCELERATE_USE_CPU=1 turns `--use_fsdp` into plain DDP), so this
worker lets accelerate's own FSDP2 path run on gloo CPU processes: once the state is initialised as MULTI_CPU with
the launcher's FSDP plugin, it is marked FSDP. Everything after that is accelerate's and ours: fully_shard on each
`_no_split_modules` layer and the model, sharded checkpoints, the gathered state dict of the final save.

For each member it trains uninterrupted, then interrupted (time limit) and resumed, and writes what the test checks
to RESULTS (main process): the loss curves, the final held-out metrics, and the error if a member failed.
"""

import json
import sys
import traceback
from dataclasses import replace
from pathlib import Path

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_initialise = AcceleratorState.__init__


def _fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _initialise(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


AcceleratorState.__init__ = _fsdp_on_cpu

from attnlab.members import MEMBERS  # noqa: E402  (after the patch, as the CLI would be)
from attnlab.workbench.training import TrainArgs, train  # noqa: E402


def main(work_dir: str, train_file: str, validation_file: str):
    work_dir = Path(work_dir)
    results = {}
    for name in sorted(MEMBERS):
        args = TrainArgs(model=name, preset="tiny", train_files=[train_file], validation_files=[validation_file],
                         block_size=32, batch_size=2, max_steps=3, eval_every=2, eval_blocks=3, save_every=0,
                         num_threads=1, output_dir=str(work_dir / f"{name}-full"))
        try:
            if AcceleratorState._shared_state:  # the plugin remembers the first model's layer class: forget it
                AcceleratorState().fsdp_plugin.transformer_cls_names_to_wrap = None
            full = train(args)
            interrupted = replace(args, output_dir=str(work_dir / f"{name}-resumed"))
            stopped = train(replace(interrupted, time_limit=0.0))  # one step, a sharded checkpoint
            resumed = train(replace(interrupted, resume=True))
            results[name] = dict(distributed_type=AcceleratorState().distributed_type.value,
                                 full=full, stopped_steps=stopped["steps"], resumed=resumed)
        except Exception as error:  # recorded for the test, which names the member
            results[name] = dict(error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc()[-2000:])
    if PartialState().is_main_process:
        (work_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main(*sys.argv[1:])
