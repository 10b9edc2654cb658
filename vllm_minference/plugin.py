"""vLLM general plugin: makes ``--attention-backend minference`` select this backend.

Runs in every vLLM process (API server, engine core, workers) through the
``vllm.general_plugins`` entry point.  It must be cheap and idempotent: it stores a class
path (the backend module is imported only when vLLM resolves the backend) and adds the
name ``MINFERENCE`` as an alias of the registry's ``CUSTOM`` member.  An alias, not a new
member: the parsed choice is ``CUSTOM``, which pickles by value and so reaches spawned
workers intact before their plugins load.
"""

from __future__ import annotations

BACKEND_NAME = "MINFERENCE"
BACKEND_CLASS = "vllm_minference.backend.MInferenceBackend"


def register() -> None:
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    register_backend(AttentionBackendEnum.CUSTOM, BACKEND_CLASS)
    # Enum name lookup (AttentionBackendEnum["MINFERENCE"], used for --attention-backend
    # after .upper()) goes through the member map; this is the only registry internal used.
    AttentionBackendEnum._member_map_.setdefault(BACKEND_NAME, AttentionBackendEnum.CUSTOM)
