"""Model access. The seam is ``base`` (the ``Model`` protocol: ``generate(messages, params,
n)``); its implementations are ``litellm_model`` (any litellm model string; the only module
that imports litellm), ``http_transport`` (direct OpenAI-compatible JSON), ``engine_model``
(the in-process engine of ``local_model``), ``function_model`` and ``scripted`` (test
doubles with faults); ``providers.resolve_model`` picks one for a model string. Around every
call: the client (``client``: budget, cache, retries, tracing), its config and records
(``config``), the retry policy and error kinds (``retry``), prices (``pricing``) and budgets
(``budget``). docs/models.md shows how to write a model of your own."""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # else litellm fetches it
