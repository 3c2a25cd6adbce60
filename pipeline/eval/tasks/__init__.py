"""Built-in eval tasks: importing this package registers them all in pipeline/eval/registry.py's `TASKS`."""

from pipeline.eval.tasks import decoding  # noqa: F401,E402
from pipeline.eval.tasks import detection  # noqa: F401,E402
from pipeline.eval.tasks import digits  # noqa: F401,E402
from pipeline.eval.tasks import forecasting  # noqa: F401,E402
from pipeline.eval.tasks import generation  # noqa: F401,E402
from pipeline.eval.tasks import graphs  # noqa: F401,E402
from pipeline.eval.tasks import poses  # noqa: F401,E402
from pipeline.eval.tasks import probes  # noqa: F401,E402
from pipeline.eval.tasks import retrieval  # noqa: F401,E402
from pipeline.eval.tasks import sam  # noqa: F401,E402
from pipeline.eval.tasks import signals  # noqa: F401,E402
from pipeline.eval.tasks import tables  # noqa: F401,E402
