"""Built-in eval tasks: importing this package registers them (see pipeline/eval/registry.py)."""

from pipeline.eval.tasks import decoding  # noqa: F401,E402
from pipeline.eval.tasks import digits  # noqa: F401,E402
from pipeline.eval.tasks import probes  # noqa: F401,E402
from pipeline.eval.tasks import retrieval  # noqa: F401,E402
