"""Model access: the client (``client``), its config and records (``config``), retry policy
(``retry``), loopwright's litellm providers (``providers``), the direct OpenAI-compatible
transport (``http_transport``), the in-process engine (``local_model``), scripted test
doubles (``scripted``) and budgets (``budget``). A new provider goes in ``providers`` (a
litellm custom provider) or, for an in-process engine, next to ``local_model``."""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # else litellm fetches it
