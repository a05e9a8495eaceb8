"""What one stage hands the next, typed and versioned, in one torch-free place.

    distill  -> run folder (RunLayout): student.pt (StudentCheckpoint), split.json (SplitInfo),
                eval_logits.npz (EvalLogits, from each net's NetEval)
    export   -> bundle folder: manifest.json (BundleManifest, its `data` a SplitInfo)
    validate, compare, --resume read them back through the same classes

Only this package spells the files' names and their keys; a stage that needs a figure asks the
contract for it. Each contract knows its format version and refuses a file of another one, or one
lacking a key its version requires, with one ContractError line. Nothing here imports torch:
`edgekd validate` runs on devices without it (student.pt's torch.save/torch.load stay in
edgekd.training.checkpoint, around StudentCheckpoint.to_dict/from_dict).
"""

from edgekd.contracts.errors import ContractError, ManifestError, SplitInfoError, StudentCheckpointError
from edgekd.contracts.eval_logits import EvalLogits, Evals, NetEval
from edgekd.contracts.manifest import (BUNDLE_KIND, CPU_ONLY_PRECISIONS, PRECISIONS, SCHEMA_VERSION,
                                       BundleManifest)
from edgekd.contracts.run_layout import RunLayout
from edgekd.contracts.split_info import SplitInfo
from edgekd.contracts.student import StudentCheckpoint

__all__ = [
    "BUNDLE_KIND", "BundleManifest", "CPU_ONLY_PRECISIONS", "ContractError", "EvalLogits", "Evals", "ManifestError",
    "NetEval", "PRECISIONS", "RunLayout", "SCHEMA_VERSION", "SplitInfo", "SplitInfoError", "StudentCheckpoint",
    "StudentCheckpointError",
]  # fmt: skip
