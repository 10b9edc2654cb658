"""vllm-minference: MInference-style sparse prefill as a vLLM V1 attention backend."""

__version__ = "0.1.0"
