import os

# One torch process on two cores: keep tests from oversubscribing threads in subprocesses.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
