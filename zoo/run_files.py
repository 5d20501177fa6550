"""The names of the files in a run directory, shared by the code that writes and reads them."""

#: written last, on success: a run directory with it holds a finished run
REPORT = "report.json"
#: the run's settings and its data's provenance, written before training
CONFIG = "config.json"
#: parameters, optimizer and RNG state, for :func:`zoo.resume`
CHECKPOINT = "checkpoint.pt"
#: the lock file inside a run directory (empty; held with flock while a run writes there)
LOCK = ".lock"
#: the command that continues a checkpointed run
RESUME_COMMAND = "python -m zoo.run --resume"

__all__ = ["CHECKPOINT", "CONFIG", "LOCK", "REPORT", "RESUME_COMMAND"]
